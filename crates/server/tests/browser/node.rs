//! The client library's own tests (`web/client/test`, Node's built-in runner) against the
//! real server, so `cargo test` runs them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::server::{API_KEY, Scheme, ServerSpec};

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web")
}

fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_library_tests_pass_under_node() {
    if !have("node") || !have("npm") {
        assert!(std::env::var_os("CI").is_none(), "node and npm are needed for the client library tests");
        eprintln!("skipped: node or npm is not installed");
        return;
    }
    let web = web_dir();
    // `ws` stands in for the browser's WebSocket (Node 20 has none); the lock file pins it.
    let npm = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefer-offline"])
        .current_dir(&web)
        .output()
        .unwrap();
    assert!(npm.status.success(), "npm ci failed: {}", String::from_utf8_lossy(&npm.stderr));

    let spec = ServerSpec::new(Scheme::Http);
    let _server = spec.start().await;
    let origin = spec.origin();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["--test", "--test-reporter=spec", "client/test/"])
            .current_dir(&web)
            .env("RENDEZVOUS_URL", origin)
            .env("RENDEZVOUS_API_KEY", API_KEY)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "node --test failed (output above)");
    assert!(stdout.contains("ℹ pass") && stdout.contains("ℹ fail 0"), "no test results in the output");
}
