//! `airavata chat`: the interactive chat driven through a pseudo-terminal
//! (rexpect), and the one-shot `-p` mode compared with the server's own
//! greedy answers. Both run stories260K (`$AIRAVATA_ASSETS`, the rule of
//! `tests/common/assets.rs`).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use rexpect::reader::{Options, ReadUntil};
use rexpect::session::PtySession;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_airavata");

fn model(test: &str) -> Option<PathBuf> {
    common::asset(test, "stories260k-gguf/stories260K.gguf")
}

/// rexpect hands the terminal's bytes over one `char` per byte: UTF-8 text
/// is read back from that form.
fn from_pty(s: &str) -> String {
    let bytes: Vec<u8> = s.chars().map(|c| c as u32 as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn spawn_chat(model: &PathBuf, extra: &[&str]) -> PtySession {
    let mut cmd = Command::new(BIN);
    cmd.arg("chat")
        .arg(model)
        .args(["--threads", "2", "--ctx-size", "1024", "--temperature", "0"])
        // As `test_options` for the server it is compared with.
        .args(["--flash-attn", "off"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .env("TERM", "xterm");
    rexpect::spawn_with_options(
        cmd,
        Options::new()
            .timeout_ms(Some(60_000))
            .strip_ansi_escape_codes(true),
    )
    .expect("spawn airavata chat in a pty")
}

const PROMPT: &str = ">>> ";

/// One turn as the terminal showed it: the answer (the text between the
/// end of the echoed input line and the statistics line), the completion
/// tokens and the context used.
struct Turn {
    answer: String,
    tokens: u32,
    used: u32,
}

/// Waits for a turn's statistics line and reads the turn back.
fn turn(p: &mut PtySession) -> Turn {
    let (before, stats) = p
        .exp_regex(r"\[\d+ tokens, [0-9.]+ tokens/s, context \d+/1024\]")
        .expect("statistics line");
    let nums: Vec<u32> = stats
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    // [N tokens, R.R tokens/s, context U/C]: N, the digits of R, U, C.
    let shown = from_pty(&before);
    // The line editor redraws the input with bare carriage returns; the
    // first newline ends it, and the answer's own newlines arrive as CRLF.
    let answer = shown
        .split_once("\r\n")
        .map_or("", |(_, rest)| rest)
        .strip_suffix("\r\n")
        .unwrap_or_default()
        .replace("\r\n", "\n");
    Turn {
        answer,
        tokens: nums[0],
        used: nums[nums.len() - 2],
    }
}

/// The server's greedy answer to `messages` and the context it used.
fn reference(
    rt: &tokio::runtime::Runtime,
    url: &str,
    messages: Value,
    max_tokens: u32,
) -> (String, u32) {
    let req = common::server::client()
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({"messages": messages, "temperature": 0, "max_tokens": max_tokens}));
    let v: Value = rt.block_on(async move {
        let res = req.send().await.expect("request");
        assert_eq!(res.status(), 200);
        res.json().await.expect("JSON")
    });
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string();
    let used = v["usage"]["total_tokens"].as_u64().expect("usage") as u32;
    (text, used)
}

/// The exit status, as nix's `WaitStatus` prints (rexpect does not re-export it).
fn exit_status(p: &mut PtySession) -> String {
    let status = format!("{:?}", p.process_mut().wait().expect("wait"));
    // `Exited(Pid(1234), 0)` → `Exited(0)`.
    match status.split_once("), ") {
        Some((head, code)) if head.starts_with("Exited(Pid(") => format!("Exited({code}"),
        _ => status,
    }
}

#[test]
fn chat_in_a_pseudo_terminal() {
    let Some(model) = model("chat_in_a_pseudo_terminal") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = rt.block_on(common::server::start(
        common::server::test_options(),
        model.clone(),
    ));
    let url = server.url();
    const MAX: u32 = 32;
    let mut p = spawn_chat(
        &model,
        &["--max-tokens", &MAX.to_string(), "--step-delay-ms", "25"],
    );
    p.exp_string(PROMPT).expect("first prompt");

    // A Devanagari turn streams the same answer the server gives the same
    // message: the input arrived intact.
    let hindi = "नमस्ते! एक कहानी सुनाइए।";
    p.send_line(hindi).expect("send");
    let t1 = turn(&mut p);
    let conv1 = json!([{"role": "user", "content": hindi}]);
    let (text1, used1) = reference(&rt, &url, conv1, MAX);
    assert_eq!((t1.answer.as_str(), t1.used), (text1.as_str(), used1));
    assert!(t1.tokens > 0);
    p.exp_string(PROMPT).expect("prompt after turn 1");

    // A second turn carries the first in its context.
    let english = "Tell me about the dog.";
    p.send_line(english).expect("send");
    let t2 = turn(&mut p);
    let conv2 = json!([
        {"role": "user", "content": hindi},
        {"role": "assistant", "content": t1.answer},
        {"role": "user", "content": english},
    ]);
    let (text2, used2) = reference(&rt, &url, conv2, MAX);
    assert_eq!((t2.answer.as_str(), t2.used), (text2.as_str(), used2));
    assert!(
        t2.used > t1.used + 5,
        "turn 2 used {}, turn 1 {}",
        t2.used,
        t1.used
    );
    p.exp_string(PROMPT).expect("prompt after turn 2");

    // /reset forgets it: the same question is turn 1 again.
    p.send_line("/reset").expect("send");
    p.exp_string("(conversation cleared)").expect("reset");
    p.exp_string(PROMPT).expect("prompt after reset");
    p.send_line(hindi).expect("send");
    let t3 = turn(&mut p);
    assert_eq!((t3.answer.as_str(), t3.used), (t1.answer.as_str(), t1.used));
    p.exp_string(PROMPT).expect("prompt after turn 3");

    // Ctrl-C during an answer stops it and returns to the prompt.
    p.send_line("Once upon a time").expect("send");
    // The echoed input ends at the first newline; Ctrl-C goes once the
    // answer's first visible text has arrived.
    p.exp_string("\r\n").expect("echoed input");
    p.exp_regex(r"\S").expect("the answer's first token");
    p.send_control('c').expect("Ctrl-C");
    let (before, ended) = p
        .exp_any(vec![
            ReadUntil::String("[stopped]".into()),
            ReadUntil::Regex(r"\[\d+ tokens".parse().expect("regex")),
        ])
        .expect("the answer ended");
    assert_eq!(
        ended,
        "[stopped]",
        "the answer finished instead of stopping: {}",
        from_pty(&before)
    );
    p.exp_string(PROMPT).expect("prompt after Ctrl-C");

    // Still alive, and /exit exits 0.
    p.send_line("/exit").expect("send");
    p.exp_eof().expect("exit");
    assert_eq!(exit_status(&mut p), "Exited(0)");
    rt.block_on(server.shutdown()).expect("shutdown");
}

#[test]
fn ctrl_c_twice_or_ctrl_d_at_the_prompt_exits() {
    let Some(model) = model("ctrl_c_twice_or_ctrl_d_at_the_prompt_exits") else {
        return;
    };
    let mut p = spawn_chat(&model, &[]);
    p.exp_string(PROMPT).expect("prompt");
    p.send_control('c').expect("Ctrl-C");
    p.exp_string("Ctrl-C again").expect("hint");
    p.exp_string(PROMPT).expect("prompt again");
    p.send_control('c').expect("Ctrl-C");
    p.exp_eof().expect("exit");
    assert_eq!(exit_status(&mut p), "Exited(0)");

    let mut p = spawn_chat(&model, &[]);
    p.exp_string(PROMPT).expect("prompt");
    p.send_control('d').expect("Ctrl-D");
    p.exp_eof().expect("exit");
    assert_eq!(exit_status(&mut p), "Exited(0)");
}

/// Runs `airavata chat MODEL ARGS…` without a terminal; returns (stdout, stderr).
fn one_shot(model: &PathBuf, args: &[&str], stdin: &str) -> (String, String) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("chat")
        .arg(model)
        .args(["--threads", "2", "--ctx-size", "1024", "--temperature", "0"])
        // As `test_options` for the server it is compared with.
        .args(["--flash-attn", "off"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run airavata chat -p");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chat -p failed: {stderr}");
    (
        String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr,
    )
}

#[test]
fn one_shot_prints_exactly_the_answer() {
    let Some(model) = model("one_shot_prints_exactly_the_answer") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = rt.block_on(common::server::start(
        common::server::test_options(),
        model.clone(),
    ));
    let url = server.url();
    let client = common::server::client();
    let post = |path: &str, body: Value| {
        let req = client.post(format!("{url}{path}")).json(&body);
        rt.block_on(async move {
            let res = req.send().await.expect("request");
            assert_eq!(res.status(), 200);
            res.json::<Value>().await.expect("JSON")
        })
    };

    let hindi = "भारत की राजधानी क्या है?";
    let (stdout, stderr) = one_shot(&model, &["-p", hindi, "--max-tokens", "40"], "");
    let generated = post("/generate", json!({"prompt": hindi, "max_new_tokens": 40}));
    let expected = generated["generated_text"].as_str().expect("text");
    assert!(!expected.is_empty());
    assert_eq!(stdout, format!("{expected}\n"));
    assert!(stderr.contains("tokens/s"), "stats go to stderr: {stderr}");

    // With a system prompt, as /v1/chat/completions answers the same messages;
    // `-p -` reads the message from stdin.
    let system = "You are a storyteller.";
    let (stdout, _) = one_shot(
        &model,
        &["-p", "-", "--system", system, "--max-tokens", "32"],
        "Tell me a story.",
    );
    let chat = post(
        "/v1/chat/completions",
        json!({
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": "Tell me a story."},
            ],
            "temperature": 0,
            "max_tokens": 32,
        }),
    );
    let expected = chat["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert_eq!(stdout, format!("{expected}\n"));
    rt.block_on(server.shutdown()).expect("shutdown");
}
