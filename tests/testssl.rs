//! The TLS listener checked by the real testssl.sh (Debian's `testssl.sh` package;
//! `.ci/run` installs it): no protocol below TLS 1.2, no weak cipher category, and none
//! of its vulnerability checks positive. Its protocol, cipher-category and
//! vulnerability checks take about 30 s.

mod common;

use std::process::Command;

use common::*;

#[test]
fn testssl_finds_no_old_protocol_weak_cipher_or_vulnerability() {
    assert!(
        have("testssl"),
        "testssl is missing (apt-get install testssl.sh)"
    );
    let certs = TestCerts::make("testssl");
    let srv = in_process(&format!("--protocol http {}", certs.args()));
    let json = std::env::temp_dir().join(format!("reactor-testssl-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let out = Command::new("testssl")
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--protocols",
            "--std",
        ])
        .args(["--vulnerable", "--jsonfile"])
        .arg(&json)
        .arg(srv.local_addr().to_string())
        .output()
        .expect("testssl runs");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no JSON from testssl ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let findings: Vec<serde_json::Value> = serde_json::from_str(&text).expect("testssl's JSON");
    let find = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .and_then(|f| f["finding"].as_str())
            .unwrap_or_else(|| panic!("testssl reported nothing for {id}"))
            .to_string()
    };
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert_eq!(find(old), "not offered", "{old}");
    }
    assert!(find("TLS1_2").starts_with("offered"));
    assert!(find("TLS1_3").starts_with("offered"));
    // Every finding is OK or information: nothing LOW, MEDIUM, HIGH or CRITICAL, no
    // WARN (a check that could not run).
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| !matches!(f["severity"].as_str(), Some("OK" | "INFO")))
        .map(|f| format!("{} {}: {}", f["id"], f["severity"], f["finding"]))
        .collect();
    assert!(bad.is_empty(), "testssl: {bad:#?}");
    assert!(
        findings.len() >= 30,
        "too few checks ran: {}",
        findings.len()
    );
    let _ = std::fs::remove_file(&json);
}
