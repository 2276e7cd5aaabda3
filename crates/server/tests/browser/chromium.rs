//! Debian's headless Chromium as a child process, with fake camera and microphone.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::cdp::Cdp;

/// A running Chromium and the DevTools connection to it.
pub struct Chromium {
    child: Child,
    profile: PathBuf,
    pub cdp: Arc<Cdp>,
}

/// The Chromium binary: `CHROMIUM` if set, else `chromium` on PATH (Debian's package,
/// installed by scripts/lib/browser.sh). Missing: `None`, which fails under CI.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(p.into());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .flat_map(|d| ["chromium", "chromium-browser"].map(|n| PathBuf::from(d).join(n)))
        .find(|p| p.is_file())
}

impl Chromium {
    /// Starts headless Chromium; `None` when it is not installed (and `CI` is unset).
    pub async fn launch() -> Option<Chromium> {
        let Some(bin) = binary() else {
            assert!(std::env::var_os("CI").is_none(), "chromium is not installed (scripts/lib/browser.sh installs it)");
            eprintln!("skipped: chromium is not installed; scripts/test installs it");
            return None;
        };
        let profile = std::env::temp_dir().join(format!("rendezvous-chromium-{}", uuid::Uuid::new_v4().simple()));
        let mut child = Command::new(bin)
            .args([
                "--headless=new",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--metrics-recording-only",
                "--mute-audio",
                // The server's certificate is self-signed (tests/fixtures).
                "--ignore-certificate-errors",
                // A camera and microphone that exist, and permission prompts that say yes.
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                "--autoplay-policy=no-user-gesture-required",
                // Both pages are on this machine: let ICE use loopback, with plain addresses.
                "--allow-loopback-in-peer-connection",
                "--disable-features=WebRtcHideLocalIpsWithMdns,Translate,MediaRouter",
                "--window-size=1280,800",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            // Running as root (CI) needs this; the pages are our own.
            .arg("--no-sandbox")
            .arg("about:blank")
            // Its own process group, so the renderers and helpers go with it.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start chromium");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(url.trim().to_owned());
                    }
                }
            }
        });
        let url = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .unwrap()
            .expect("chromium did not print its DevTools address within 30 s");
        let cdp = Cdp::connect(&url).await;
        Some(Chromium { child, profile, cdp })
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
