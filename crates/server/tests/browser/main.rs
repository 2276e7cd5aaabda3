//! Browser tests against the real `rendezvous` binary: the client library's Node tests,
//! and the demo app end to end in headless Chromium over `wss` (driven through the
//! DevTools protocol).
//!
//! Needs `node`/`npm` and Debian's `chromium` (scripts/lib/browser.sh installs it); without
//! them the tests say so and pass, except under `CI`, where they fail.

mod assets;
mod bench;
mod cdp;
mod chromium;
mod e2e;
mod node;
mod server;
