//! The library as a user's crate gets it: a crate made here in a temporary folder,
//! depending on this one by path with `default-features = false`, builds with none of
//! the command line's dependencies, and runs a protocol of its own with open and close
//! hooks, the peer's address and a push from another thread (`tests/outside/program.rs`).
//!
//! It builds with the lockfile of this project, offline: the dependencies are those
//! `cargo test` already fetched.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn outside_crate() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("reactor-outside-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"outside\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
             [dependencies]\nreactor = {{ path = {:?}, default-features = false }}\n\n\
             [workspace]\n",
            root.display().to_string()
        ),
    )
    .unwrap();
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::copy(
        root.join("tests/outside/program.rs"),
        dir.join("src/main.rs"),
    )
    .unwrap();
    dir
}

#[test]
fn a_crate_outside_builds_without_the_cli_and_runs_hooks_and_pushes() {
    let dir = outside_crate();
    let tree = cargo()
        .args(["tree", "-e", "normal", "--offline", "--prefix", "none"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let tree = String::from_utf8_lossy(&tree.stdout).into_owned();
    assert!(tree.contains("reactor v"), "cargo tree: {tree}");
    for dep in ["clap", "env_logger", "indicatif", "hdrhistogram"] {
        assert!(
            !tree.lines().any(|l| l.starts_with(&format!("{dep} v"))),
            "{dep} is in the library's build:\n{tree}"
        );
    }
    // Its own target folder, inside this project's, so a second run builds nothing.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/outside");
    let run = cargo()
        .args(["run", "--offline", "-q"])
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .current_dir(&dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "the program failed:\n{out}\n{err}");
    assert!(out.contains("pushed from another thread"), "{out}");
    assert!(out.contains("closed: normal"), "{out}");
    assert!(out.lines().last() == Some("ok"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
