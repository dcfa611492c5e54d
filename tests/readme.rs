//! README's first command, `cargo run --release`, must start the server: with several
//! binaries in the package, cargo needs to be told which one (it refused with "could not
//! determine which binary to run" once reactor-client joined reactor-bench).

use std::process::Command;

#[test]
fn cargo_run_starts_the_server_binary() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let pkg = &meta["packages"][0];
    let bins: Vec<&str> = pkg["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(bins.contains(&"reactor"), "binaries: {bins:?}");
    if bins.len() > 1 {
        assert_eq!(
            pkg["default_run"].as_str(),
            Some("reactor"),
            "`cargo run` must pick the server among {bins:?}"
        );
    }
}
