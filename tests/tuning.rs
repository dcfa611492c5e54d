//! tuning/sysctl.sh and tuning/ulimit.sh, run for real. Settings are changed only inside
//! network namespaces made for the test (`ip netns add`), with `--scope net`, so the
//! host's values are never touched.
mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script(name: &str) -> String {
    root().join("tuning").join(name).display().to_string()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A network namespace that is deleted when dropped.
struct Netns(String);

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Netns {
    /// `None` (after a note) where namespaces cannot be made; on CI that is a failure.
    fn new() -> Option<Netns> {
        if !have("ip") {
            return None;
        }
        if !is_root() {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            eprintln!("skipping: making a network namespace needs root");
            return None;
        }
        let name = format!(
            "reactor-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name}");
        Some(Netns(name))
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap()
    }

    fn sysctl(&self, args: &[&str]) -> Output {
        let path = script("sysctl.sh");
        let mut all = vec!["bash", path.as_str()];
        all.extend(args);
        self.run(&all)
    }

    fn read(&self, key: &str) -> String {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let o = self.run(&["cat", &path]);
        assert!(o.status.success(), "read {key}");
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

const KEYS: &[(&str, &str)] = &[
    ("net.ipv4.tcp_max_syn_backlog", "8192"),
    ("net.ipv4.ip_local_port_range", "10000 65535"),
    ("net.ipv4.tcp_tw_reuse", "1"),
    ("net.ipv4.tcp_fin_timeout", "30"),
    ("net.ipv4.tcp_keepalive_time", "600"),
    ("net.ipv4.tcp_keepalive_intvl", "30"),
    ("net.ipv4.tcp_keepalive_probes", "5"),
];

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "reactor-tuning-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn apply_apply_again_and_revert_in_a_namespace() {
    let Some(ns) = Netns::new() else { return };
    let state = temp("sysctl.state");
    let st = state.to_str().unwrap();
    let before: Vec<String> = KEYS.iter().map(|(k, _)| ns.read(k)).collect();
    assert_ne!(
        before[3], "30",
        "a fresh namespace starts from the kernel defaults"
    );

    let o = ns.sysctl(&["check", "--scope", "net"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("CHANGE"));

    let o = ns.sysctl(&["apply", "--scope", "net", "--state", st]);
    assert!(o.status.success(), "{}", text(&o));
    for (k, want) in KEYS {
        assert_eq!(&ns.read(k), want, "{k} after apply");
    }
    let o = ns.sysctl(&["check", "--scope", "net"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("All settings meet the c10k profile"));

    // A second apply, with a bigger profile, must keep the first originals.
    let o = ns.sysctl(&["apply", "--scope", "net", "--profile", "c1m", "--state", st]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(ns.read("net.ipv4.tcp_fin_timeout"), "10");
    assert_eq!(ns.read("net.ipv4.tcp_rmem"), "4096 16384 4194304");

    let o = ns.sysctl(&["revert", "--scope", "net", "--state", st]);
    assert!(o.status.success(), "{}", text(&o));
    let after: Vec<String> = KEYS.iter().map(|(k, _)| ns.read(k)).collect();
    assert_eq!(
        after, before,
        "revert gives back the values from before the first apply"
    );
    assert!(!state.exists(), "the state file is removed after a revert");
    let o = ns.sysctl(&["revert", "--scope", "net", "--state", st]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("no state file"), "{}", text(&o));
}

#[test]
fn settings_the_namespace_lacks_are_reported_and_skipped() {
    let Some(ns) = Netns::new() else { return };
    let lacks = !ns
        .run(&["test", "-e", "/proc/sys/net/core/netdev_max_backlog"])
        .status
        .success();
    let o = ns.sysctl(&[
        "apply",
        "--scope",
        "net",
        "--state",
        temp("s").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    if lacks {
        assert!(
            text(&o)
                .contains("net.core.netdev_max_backlog: not in this kernel or namespace, skipped"),
            "{}",
            text(&o)
        );
        let o = ns.sysctl(&["check", "--scope", "net"]);
        assert!(
            text(&o)
                .lines()
                .any(|l| l.starts_with("net.core.netdev_max_backlog") && l.contains("missing"))
        );
    }
    // fs.* is outside --scope net: never listed, never written.
    assert!(!text(&o).contains("fs."), "{}", text(&o));
}

#[test]
fn dry_run_and_persist() {
    let Some(ns) = Netns::new() else { return };
    let state = temp("s");
    let before = ns.read("net.ipv4.tcp_fin_timeout");
    let o = ns.sysctl(&[
        "apply",
        "--scope",
        "net",
        "--dry-run",
        "--state",
        state.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert!(
        text(&o).contains("would write net.ipv4.tcp_fin_timeout = 30"),
        "{}",
        text(&o)
    );
    assert_eq!(
        ns.read("net.ipv4.tcp_fin_timeout"),
        before,
        "dry run writes nothing"
    );
    assert!(!state.exists());

    let dir = temp("sysctl.d");
    let o = ns.sysctl(&[
        "apply",
        "--scope",
        "net",
        "--persist",
        "--sysctl-d",
        dir.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let conf = std::fs::read_to_string(dir.join("90-reactor.conf")).unwrap();
    assert!(conf.contains("net.ipv4.tcp_fin_timeout = 30"), "{conf}");
    let o = ns.sysctl(&[
        "revert",
        "--scope",
        "net",
        "--sysctl-d",
        dir.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!dir.join("90-reactor.conf").exists());
    assert_eq!(ns.read("net.ipv4.tcp_fin_timeout"), before);
}

/// A fresh directory (mode 755) that any user can reach: each directory on its path lets
/// others through. The checkout may not (a clone under root's mode-700 home), so what
/// another user must run is copied here. The system temp directory first, else /tmp.
fn world_dir() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let reachable = |d: &std::path::Path| {
        d.ancestors().all(|a| {
            std::fs::metadata(a).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o001 != 0)
        })
    };
    let base = [std::env::temp_dir(), PathBuf::from("/tmp")]
        .into_iter()
        .find(|d| reachable(d))
        .expect("a temp directory other users can traverse");
    let d = base.join(format!(
        "reactor-tuning-world-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

#[test]
fn apply_without_root_says_so_and_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let Some(ns) = Netns::new() else { return };
    if !have("setpriv") {
        return;
    }
    // uid 65534 runs a copy of the script from a directory it can reach, wherever the
    // checkout is; the state file would go there too.
    let dir = world_dir();
    let copy = dir.join("sysctl.sh");
    std::fs::copy(script("sysctl.sh"), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.join("s");
    let before = ns.read("net.ipv4.tcp_fin_timeout");
    let o = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg("bash")
        .arg(&copy)
        .args(["apply", "--scope", "net", "--state"])
        .arg(&state)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("needs root"), "{}", text(&o));
    assert_eq!(ns.read("net.ipv4.tcp_fin_timeout"), before);
    assert!(!state.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_corrupt_state_file_makes_revert_refuse() {
    let Some(ns) = Netns::new() else { return };
    let state = temp("s");
    let st = state.to_str().unwrap();
    let o = ns.sysctl(&["apply", "--scope", "net", "--state", st]);
    assert!(o.status.success());
    for garbage in [
        "net.ipv4.tcp_fin_timeout=rm -rf /\n",
        "\u{0}\u{1}binary",
        "net.bogus.key=1\n",
        "# only a comment\n",
    ] {
        std::fs::write(&state, garbage).unwrap();
        let o = ns.sysctl(&["revert", "--scope", "net", "--state", st]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains("refusing to revert"), "{}", text(&o));
        assert_eq!(ns.read("net.ipv4.tcp_fin_timeout"), "30", "nothing written");
    }
}

#[test]
fn bad_usage_exits_2_with_usage() {
    for args in [
        &["frobnicate"][..],
        &["check", "--profile", "c5k"],
        &["check", "--bogus"],
        &["check", "--scope", "everything"],
        &[],
    ] {
        let o = Command::new("bash")
            .arg(script("sysctl.sh"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("Usage: tuning/sysctl.sh"), "{args:?}");
    }
    for args in [&["--bogus"][..], &["--nofile", "lots"], &["--pid"]] {
        let o = Command::new("bash")
            .arg(script("ulimit.sh"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("Usage: tuning/ulimit.sh"), "{args:?}");
    }
}

#[test]
fn ulimit_shows_the_shell_and_a_running_reactor_and_installs_snippets() {
    let srv = Server::start_with_shell("ulimit -Sn 256;", "--protocol echo");
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 300; exec bash {} --pid {} --nofile 999999999",
            script("ulimit.sh"),
            srv.pid()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("this shell:   soft 300, hard "), "{t}");
    // The reactor raised its soft limit (256) to the hard one.
    let hard = t
        .split("hard ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches(',')
        .to_string();
    assert!(
        t.contains(&format!(
            "process {}: soft {hard}, hard {hard} open files",
            srv.pid()
        )),
        "{t}"
    );
    assert!(
        t.contains("The hard limit") && t.contains("is what stops you"),
        "{t}"
    );
    assert!(t.contains("LimitNOFILE=999999999"));

    let dir = temp("root");
    let o = Command::new("bash")
        .args([
            &script("ulimit.sh"),
            "--install",
            "--nofile",
            "65536",
            "--root",
            dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let limits =
        std::fs::read_to_string(dir.join("etc/security/limits.d/90-reactor.conf")).unwrap();
    assert!(limits.contains("*    hard nofile 65536"), "{limits}");
    let unit =
        std::fs::read_to_string(dir.join("etc/systemd/system/reactor.service.d/90-nofile.conf"))
            .unwrap();
    assert!(unit.contains("[Service]\nLimitNOFILE=65536"), "{unit}");
}

#[test]
fn scripts_are_shellcheck_clean() {
    if !have("shellcheck") {
        return;
    }
    let files = [
        "tuning/sysctl.sh",
        "tuning/ulimit.sh",
        "benches/compare.sh",
        "benches/workers.sh",
        "benches/chart.sh",
        "benches/tls.sh",
        "benches/perf.sh",
        "benches/ab.sh",
        "benches/soak.sh",
        "benches/lib.sh",
        "deploy/reload.sh",
        ".ci/run",
    ];
    let o = Command::new("shellcheck")
        .current_dir(root())
        .args(files)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}
