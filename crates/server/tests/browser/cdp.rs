//! A small Chrome DevTools Protocol client over tokio-tungstenite: commands with ids and
//! their answers, events broadcast to whoever listens, pages attached with flat sessions.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, Value>>>>>;

/// An event from the browser: its method, params and the page session it belongs to.
#[derive(Clone, Debug)]
pub struct Event {
    pub method: String,
    pub params: Value,
    pub session: Option<String>,
}

/// One DevTools connection to the browser.
pub struct Cdp {
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    events: broadcast::Sender<Event>,
    next_id: AtomicU64,
}

impl Cdp {
    /// Connects to the browser's `ws://127.0.0.1:PORT/devtools/browser/…` endpoint.
    pub async fn connect(url: &str) -> Arc<Cdp> {
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(256 << 20))
            .max_frame_size(Some(256 << 20));
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
            .await
            .expect("cannot open the DevTools connection");
        let (mut sink, mut stream) = ws.split();
        let (out, mut rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(4096);
        let (p, e) = (pending.clone(), events.clone());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                if let Some(id) = v["id"].as_u64() {
                    if let Some(tx) = p.lock().unwrap().remove(&id) {
                        let _ = tx.send(if v["error"].is_null() {
                            Ok(v["result"].clone())
                        } else {
                            Err(v["error"].clone())
                        });
                    }
                } else if let Some(method) = v["method"].as_str() {
                    let session = v["sessionId"].as_str().map(str::to_owned);
                    let _ = e.send(Event { method: method.to_owned(), params: v["params"].clone(), session });
                }
            }
        });
        Arc::new(Cdp { out, pending, events, next_id: AtomicU64::new(1) })
    }

    /// Sends a command (to a page session, or the browser) and waits for its answer.
    pub async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.out.send(Message::text(msg.to_string())).expect("DevTools connection closed");
        match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => panic!("DevTools connection closed during {method}"),
            Err(_) => panic!("no answer to {method} within 60 s"),
        }
    }

    /// Events from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

/// A tab in its own browser context (its own storage), attached with a flat session.
pub struct Page {
    cdp: Arc<Cdp>,
    session: String,
    pub name: String,
}

/// How long a page waits for something that should happen before the test fails.
pub const PAGE_PATIENCE: Duration = Duration::from_secs(30);

impl Page {
    /// Opens a blank tab; `init_script` runs in every document before the page's own scripts.
    pub async fn open(cdp: &Arc<Cdp>, name: &str, init_script: &str) -> Page {
        let ctx = cdp.call(None, "Target.createBrowserContext", json!({})).await.unwrap();
        let target = cdp
            .call(
                None,
                "Target.createTarget",
                json!({ "url": "about:blank", "browserContextId": ctx["browserContextId"] }),
            )
            .await
            .unwrap();
        let attached = cdp
            .call(None, "Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true }))
            .await
            .unwrap();
        let page =
            Page { cdp: cdp.clone(), session: attached["sessionId"].as_str().unwrap().to_owned(), name: name.into() };
        for domain in ["Page.enable", "Runtime.enable", "Network.enable"] {
            page.call(domain, json!({})).await;
        }
        page.call("Page.addScriptToEvaluateOnNewDocument", json!({ "source": init_script })).await;
        page.viewport(1280, 800, false).await;
        page
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    /// A command on this page; a protocol error fails the test.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.cdp
            .call(Some(&self.session), method, params)
            .await
            .unwrap_or_else(|e| panic!("{}: {method}: {e}", self.name))
    }

    /// Sets the viewport (a phone when `mobile`).
    pub async fn viewport(&self, width: u32, height: u32, mobile: bool) {
        let scale = if mobile { 2 } else { 1 };
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile }),
        )
        .await;
    }

    /// Navigates and waits for the load event.
    pub async fn goto(&self, url: &str) {
        self.load("Page.navigate", json!({ "url": url })).await;
    }

    /// Reloads and waits for the load event.
    pub async fn reload(&self) {
        self.load("Page.reload", json!({})).await;
    }

    async fn load(&self, method: &str, params: Value) {
        let url = params["url"].as_str().unwrap_or("the page").to_owned();
        let mut events = self.cdp.events();
        self.call(method, params).await;
        let deadline = tokio::time::Instant::now() + PAGE_PATIENCE;
        loop {
            let e = tokio::time::timeout_at(deadline, events.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: {url} did not load", self.name))
                .unwrap();
            if e.method == "Page.loadEventFired" && e.session.as_deref() == Some(&self.session) {
                return;
            }
        }
    }

    /// Evaluates `expr` (awaiting a promise) and returns its JSON value; a thrown error fails the test.
    pub async fn eval(&self, expr: &str) -> Value {
        let r = self
            .call("Runtime.evaluate", json!({ "expression": expr, "awaitPromise": true, "returnByValue": true }))
            .await;
        if let Some(ex) = r.get("exceptionDetails") {
            panic!(
                "{}: `{expr}` threw: {}",
                self.name,
                ex["exception"]["description"].as_str().unwrap_or(&ex.to_string())
            );
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy and returns that value; fails after [`PAGE_PATIENCE`].
    pub async fn wait_for(&self, what: &str, expr: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PAGE_PATIENCE;
        loop {
            let v = self.eval(expr).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                let text = self.eval("document.body?.innerText ?? ''").await;
                panic!("{}: timed out waiting for {what} ({expr}); the page shows: {text}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `selector` is shown and enabled, then clicks it.
    pub async fn click(&self, selector: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        self.wait_for(
            &format!("{selector} to be clickable"),
            &format!("(() => {{ const e = document.querySelector({sel}); return !!e && !e.disabled && e.getClientRects().length > 0; }})()"),
        )
        .await;
        self.eval(&format!("document.querySelector({sel}).click()")).await;
    }

    /// Types `text` into the input `selector` the way a person would (input events fire).
    pub async fn fill(&self, selector: &str, text: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        self.eval(&format!("document.querySelector({sel}).focus()")).await;
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    /// Saves a PNG screenshot to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}
