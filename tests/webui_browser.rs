//! The chat page at `/`, driven in a real headless Chromium (Debian's
//! `chromium` package, which `.ci/run` installs) over the Chrome DevTools
//! Protocol, against a real server on 127.0.0.1 serving stories260K.
//!
//! Without Chromium the test prints `skipped: …`, except when `CI` is set:
//! then it fails. The stories260K asset follows `tests/common/assets.rs`.
//! The screenshot of the page after the answers is written to
//! `$AIRAVATA_SCREENSHOT_DIR` (default: this test's target tmpdir).

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

const TEST: &str = "chat_page_in_headless_chromium";
const KEY: &str = "page-test-key";

/// The chromium binary: `$CHROME`, else the first of the usual names on PATH.
fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROME").map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
    .find(|p| p.is_file())
}

/// A headless Chromium and one page of it, over a flattened CDP session.
struct Browser {
    child: Child,
    ws: WebSocket<TcpStream>,
    session: String,
    next_id: u64,
    exceptions: Vec<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch(chrome: &Path) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(chrome)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--window-size=1100,1000",
                "--lang=en-US",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chrome.display()));
        // Chromium prints its DevTools address on stderr; keep draining it.
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium did not print its DevTools address");
        let hostport = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("host:port")
            .to_string();
        let stream = TcpStream::connect(&hostport).expect("connect to DevTools");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("read timeout");
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("DevTools handshake");
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            exceptions: Vec::new(),
            _profile: profile,
        };
        let targets = b.call("Target.getTargets", json!({}));
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["targetId"].as_str())
            .expect("a page target")
            .to_string();
        let attached = b.call(
            "Target.attachToTarget",
            json!({"targetId": page, "flatten": true}),
        );
        b.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        b
    }

    /// One CDP command; returns its result (panics on a protocol error).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .expect("send to DevTools");
        loop {
            let m = self.ws.read().expect("read from DevTools");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).expect("DevTools JSON");
            if v["method"] == "Runtime.exceptionThrown" {
                self.exceptions
                    .push(v["params"]["exceptionDetails"].to_string());
            }
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page (awaiting a promise) and returns its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy; returns its value.
    fn wait_for(&mut self, expr: &str, timeout: Duration) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.eval(expr);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(t0.elapsed() < timeout, "timed out waiting for {expr}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_for(
            "document.readyState === 'complete' && !!window.airavataChat",
            Duration::from_secs(30),
        );
    }

    fn focus(&mut self, id: &str) {
        self.eval(&format!("document.getElementById('{id}').focus()"));
    }

    /// Text as an input method commits it (Devanagari included).
    fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({"text": text}));
    }

    /// A key press (`modifiers`: 8 = Shift).
    fn key(&mut self, key: &str, code: u32, text: &str, modifiers: u32) {
        for ty in ["keyDown", "keyUp"] {
            let mut p = json!({
                "type": ty, "key": key, "code": key, "modifiers": modifiers,
                "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code,
            });
            if ty == "keyDown" && !text.is_empty() {
                p["text"] = json!(text);
                p["unmodifiedText"] = json!(text);
            }
            self.call("Input.dispatchKeyEvent", p);
        }
    }

    fn enter(&mut self, shift: bool) {
        self.key("Enter", 13, "\r", if shift { 8 } else { 0 });
    }

    /// A mouse click in the middle of the element `id`.
    fn click(&mut self, id: &str) {
        let r = self.eval(&format!(
            "(() => {{ const e = document.getElementById('{id}'); e.scrollIntoView({{block: 'center'}}); \
             const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (x, y) = (r[0].as_f64().expect("x"), r[1].as_f64().expect("y"));
        for ty in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": ty, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    fn set_field(&mut self, id: &str, text: &str) {
        self.eval(&format!(
            "(() => {{ const e = document.getElementById('{id}'); e.focus(); e.select(); }})()"
        ));
        self.type_text(text);
        // `change` fires when the field loses focus.
        self.eval(&format!("document.getElementById('{id}').blur()"));
    }

    fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        assert!(png.len() > 10_000, "screenshot of {} bytes", png.len());
        std::fs::write(path, png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last assistant message: (state, text, lang).
const LAST_ANSWER: &str = "(() => { const m = [...document.querySelectorAll('.msg.assistant')].pop(); \
    return m ? [m.dataset.state || '', m.querySelector('.text').textContent, m.querySelector('.text').lang] : null; })()";

/// Sends `text` with Enter and follows the answer as it streams; returns the
/// final text after checking that it grew in several steps before it was done.
fn send_and_follow(b: &mut Browser, text: &str) -> String {
    let before = b.eval("document.querySelectorAll('.msg.assistant').length");
    b.focus("prompt");
    b.type_text(text);
    b.enter(false);
    b.wait_for(
        &format!("document.querySelectorAll('.msg.assistant').length > {before}"),
        Duration::from_secs(10),
    );
    let mut partials = Vec::<String>::new();
    let t0 = Instant::now();
    let last = loop {
        let v = b.eval(LAST_ANSWER);
        let state = v[0].as_str().unwrap_or_default().to_string();
        let shown = v[1].as_str().unwrap_or_default().to_string();
        if state != "streaming" {
            break (state, shown);
        }
        if !shown.is_empty() && partials.last() != Some(&shown) {
            partials.push(shown);
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "answer never ended");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(last.0, "done", "answer ended as {:?}: {:?}", last.0, last.1);
    assert!(
        partials.len() >= 3,
        "the answer did not visibly stream: partial texts {partials:?}"
    );
    for p in &partials {
        assert!(
            last.1.starts_with(p.as_str()),
            "{p:?} is not a prefix of {:?}",
            last.1
        );
    }
    assert!(
        !last.1.contains('\u{FFFD}'),
        "replacement character in {:?}",
        last.1
    );
    // The user's message is shown as typed, marked with its language.
    let user = b.eval(
        "(() => { const m = [...document.querySelectorAll('.msg.user')].pop(); \
         return [m.querySelector('.text').textContent, m.querySelector('.text').lang]; })()",
    );
    assert_eq!(user[0], text);
    let devanagari = text.chars().any(|c| ('\u{0900}'..='\u{097F}').contains(&c));
    assert_eq!(user[1], if devanagari { "hi" } else { "en" });
    assert_eq!(b.eval("document.getElementById('prompt').value"), "");
    last.1
}

async fn direct_answer(url: &str, messages: &Value, max_tokens: u32) -> String {
    let res = common::server::client()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"messages": messages, "temperature": 0, "max_tokens": max_tokens}))
        .send()
        .await
        .expect("POST /v1/chat/completions");
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.expect("JSON");
    v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string()
}

async fn chat_requests(url: &str) -> u64 {
    let text = common::server::client()
        .get(format!("{url}/metrics"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with("airavata_requests_total{route=\"/v1/chat/completions\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn chat_page_in_headless_chromium() {
    let Some(chrome) = find_chromium() else {
        assert!(
            !common::in_ci(),
            "{TEST}: chromium not found and CI is set (.ci/run installs Debian's chromium)"
        );
        eprintln!("skipped: {TEST}: chromium not found (apt-get install chromium)");
        return;
    };
    let Some(model) = common::asset(TEST, "stories260k-gguf/stories260K.gguf") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut opts = common::server::test_options();
    opts.api_key = Some(KEY.into());
    opts.parallel = 2;
    // A slow model, so that streaming is visible and Stop lands mid-answer.
    opts.step_delay_ms = Some(20);
    let server = rt.block_on(common::server::start(opts, model));
    let url = server.url();
    const MAX: u32 = 40;

    let mut b = Browser::launch(&chrome);
    b.navigate(&format!("{url}/"));

    // The page loads without a key and says that the API needs one.
    b.wait_for(
        "document.getElementById('facts').textContent.includes('API key')",
        Duration::from_secs(10),
    );
    assert_eq!(
        b.eval("document.getElementById('api_key').getAttribute('aria-invalid')"),
        "true"
    );
    b.set_field("api_key", KEY);
    let facts = b.wait_for(
        "(() => { const t = document.getElementById('facts').textContent; return t.includes('ready') ? t : ''; })()",
        Duration::from_secs(10),
    );
    assert!(
        facts.as_str().is_some_and(|t| t.contains("stories260K")),
        "{facts}"
    );
    let server_facts = b.eval("document.getElementById('server').textContent");
    assert!(
        server_facts
            .as_str()
            .is_some_and(|t| t.contains("Context per chat")),
        "{server_facts}"
    );
    b.set_field("temperature", "0");
    b.set_field("max_tokens", &MAX.to_string());

    // Shift+Enter is a newline, not a send.
    b.focus("prompt");
    b.type_text("पहली पंक्ति");
    b.enter(true);
    b.type_text("दूसरी");
    assert_eq!(
        b.eval("document.getElementById('prompt').value"),
        "पहली पंक्ति\nदूसरी"
    );
    assert_eq!(b.eval("document.querySelectorAll('.msg').length"), 0);
    b.eval("document.getElementById('prompt').value = ''");

    // A Devanagari turn, then an English one; each equals the API's own
    // greedy answer to the same conversation.
    let hindi = "नमस्ते! एक छोटी कहानी सुनाइए।";
    let a1 = send_and_follow(&mut b, hindi);
    let english = "Tell me a story about a dog.";
    let a2 = send_and_follow(&mut b, english);
    let conv1 = json!([{"role": "user", "content": hindi}]);
    assert_eq!(a1, rt.block_on(direct_answer(&url, &conv1, MAX)));
    let conv2 = json!([
        {"role": "user", "content": hindi},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": english},
    ]);
    assert_eq!(a2, rt.block_on(direct_answer(&url, &conv2, MAX)));

    // Tokens per second of the last answer.
    let tps = b.eval("Number(document.getElementById('tps').dataset.tokensPerSecond)");
    assert!(tps.as_f64().is_some_and(|t| t > 0.0), "tokens/s: {tps}");
    let shown = b.eval("document.getElementById('tps').textContent");
    assert!(
        shown.as_str().is_some_and(|t| t.contains("tokens/s")),
        "{shown}"
    );

    // Regenerate replaces the last answer with a new request's.
    let before = rt.block_on(chat_requests(&url));
    b.click("regen");
    b.wait_for(
        "(() => { const m = [...document.querySelectorAll('.msg.assistant')].pop(); return m.dataset.state === 'streaming'; })() || document.body.dataset.busy === 'true'",
        Duration::from_secs(10),
    );
    let regenerated = b.wait_for(
        "(() => { const m = [...document.querySelectorAll('.msg.assistant')].pop(); return m.dataset.state === 'done' ? m.querySelector('.text').textContent : ''; })()",
        Duration::from_secs(60),
    );
    assert_eq!(regenerated, a2.as_str(), "greedy regeneration differs");
    assert_eq!(
        b.eval("document.querySelectorAll('.msg.assistant').length"),
        2
    );
    assert_eq!(b.eval("window.airavataChat.history.length"), 4);
    assert_eq!(rt.block_on(chat_requests(&url)), before + 1);

    let dir = std::env::var_os("AIRAVATA_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    b.screenshot(&dir.join("chat-page.png"));

    // Stop: a long answer is cut, the partial text stays, the server frees the slot.
    b.set_field("max_tokens", "400");
    b.focus("prompt");
    b.type_text("Once upon a time");
    b.enter(false);
    b.wait_for(
        "(() => { const m = [...document.querySelectorAll('.msg.assistant')].pop(); return m.dataset.state === 'streaming' && m.querySelector('.text').textContent.length > 10; })()",
        Duration::from_secs(30),
    );
    b.click("stop");
    let t0 = Instant::now();
    let state = loop {
        let v = b.eval(LAST_ANSWER);
        if v[0] != "streaming" {
            break v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "Stop did not stop: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(state[0], "stopped");
    let partial = state[1].as_str().unwrap_or_default().to_string();
    assert!(!partial.is_empty());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        b.eval(LAST_ANSWER)[1],
        partial.as_str(),
        "text grew after Stop"
    );
    assert_eq!(b.eval("document.getElementById('stop').disabled"), true);
    let t0 = Instant::now();
    while server.engine().stats().running() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the server kept generating after Stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The page's SSE reader never splits a character, however the bytes are cut.
    let split = b.eval(
        r#"(() => {
            const out = [];
            const p = window.airavataChat.createSSEParser((e) => out.push(e.data));
            const bytes = new TextEncoder().encode('data: {"t":"नमस्ते दुनिया"}\r\n\r\ndata: [DONE]\n\n');
            for (const b of bytes) p.push(new Uint8Array([b]));
            p.end();
            return out;
        })()"#,
    );
    assert_eq!(split, json!(["{\"t\":\"नमस्ते दुनिया\"}", "[DONE]"]));

    // A new visitor starts at llama.cpp's sampling, shown in the fields.
    assert_eq!(
        b.eval("['temperature','top_k','top_p','min_p'].map((id) => document.getElementById(id).value)"),
        json!(["0", "40", "0.95", "0.05"]),
        "the sampling fields (temperature was set to 0 above)"
    );

    // Usable on a phone: no sideways scrolling at 400 px, the settings fold
    // above the conversation, and the message box and Send stay on screen
    // after a long conversation.
    b.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 400, "height": 850, "deviceScaleFactor": 2, "mobile": true}),
    );
    b.wait_for("window.innerWidth === 400", Duration::from_secs(5));
    assert_eq!(
        b.eval("document.getElementById('settings').open"),
        false,
        "the settings stay open at phone width"
    );
    b.eval("window.scrollTo(0, 0)");
    for id in ["prompt", "send"] {
        let inside = b.eval(&format!(
            "(() => {{ const r = document.getElementById('{id}').getBoundingClientRect();              return r.top >= 0 && r.bottom <= window.innerHeight && r.left >= 0 && r.right <= window.innerWidth; }})()"
        ));
        assert_eq!(inside, true, "#{id} is off-screen at 400x850");
    }
    assert_eq!(
        b.eval("document.documentElement.scrollWidth <= window.innerWidth"),
        true,
        "the page scrolls sideways on a phone"
    );
    // Nothing overlaps the header (content overflowing upwards would).
    let overlap = b.eval(
        "(() => { const h = document.querySelector('header').getBoundingClientRect().bottom + window.scrollY; \
         return [...document.querySelectorAll('.msg, aside, main')].filter((e) => e.getBoundingClientRect().top + window.scrollY < h - 1).length; })()",
    );
    assert_eq!(overlap, 0, "elements overlap the header on a phone");
    b.screenshot(&dir.join("chat-page-phone-400x850.png"));

    assert!(
        b.exceptions.is_empty(),
        "page exceptions: {:?}",
        b.exceptions
    );
    drop(b);
    rt.block_on(server.shutdown()).expect("shutdown");
}
