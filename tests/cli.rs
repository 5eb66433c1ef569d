//! The `airavata` binary: --version, convert + inspect, and error exits.

use std::process::Command;

mod common;

fn airavata() -> Command {
    Command::new(env!("CARGO_BIN_EXE_airavata"))
}

#[test]
fn version_names_the_llama_cpp_build() {
    let out = airavata().arg("--version").output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(
        s.contains("llama.cpp b11434") && s.contains("llama-cpp-sys-2 0.1.161"),
        "{s}"
    );
}

#[test]
fn synth_convert_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    let st = airavata()
        .args(["synth", "--config", "tiny", "--shards", "2"])
        .arg(&hf)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let out = tmp.path().join("t.gguf");
    let st = airavata()
        .args(["convert", "-q", "--tensor-type", "blk.0.*=Q8_0", "-o"])
        .arg(&out)
        .arg(&hf)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(
        err.contains("IQ4_XS") && err.contains("Q6_K") && err.contains("Q8_0"),
        "{err}"
    );

    let st = airavata().arg("inspect").arg(&out).output().unwrap();
    assert!(st.status.success());
    let text = String::from_utf8(st.stdout).unwrap();
    for want in [
        "general.architecture",
        "\"llama\"",
        "blk.0.attn_q.weight",
        "Q8_0",
        "blk.1.attn_q.weight",
        "IQ4_XS",
        "output.weight",
        "Q6_K",
        "bits per weight",
    ] {
        assert!(text.contains(want), "inspect output lacks {want}:\n{text}");
    }
    // The file type by number and by llama.cpp's name.
    let ftype = text
        .lines()
        .find(|l| l.trim_start().starts_with("general.file_type "))
        .unwrap_or_else(|| panic!("no general.file_type line:\n{text}"));
    assert!(ftype.ends_with(" 30 (IQ4_XS)"), "{ftype:?}");
    let st = airavata()
        .args(["inspect", "--json"])
        .arg(&out)
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(j["metadata"]["general.file_type"], 30);
    assert_eq!(j["file_type"], "IQ4_XS");
    assert_eq!(j["tensors"].as_array().unwrap().len(), 21);

    // Refuses to overwrite without --force, with a non-zero exit.
    let st = airavata()
        .args(["convert", "-q", "-o"])
        .arg(&out)
        .arg(&hf)
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("--force"));
}

/// `serve --chat-template` is resolved before the model: a name that is
/// neither built in nor a file, or a file that is not Jinja, exits non-zero
/// naming the problem.
#[test]
fn serve_checks_chat_template_first() {
    let tmp = tempfile::tempdir().unwrap();
    let st = airavata()
        .args(["serve", "./no/such/model.gguf", "--chat-template", "nosuch"])
        .output()
        .unwrap();
    assert!(!st.status.success());
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(
        err.contains("--chat-template nosuch: not a built-in template (airavata, chatml) and not a readable file"),
        "{err}"
    );
    let bad = tmp.path().join("bad.jinja");
    std::fs::write(&bad, "{% for m in messages %}{{ m.content }}").unwrap();
    let st = airavata()
        .args(["serve", "./no/such/model.gguf", "--chat-template"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!st.status.success());
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(
        err.contains("chat template (line 1) does not compile: syntax error"),
        "{err}"
    );
    // A valid one gets past the check to the model (which does not exist).
    let st = airavata()
        .args(["serve", "./no/such/model.gguf", "--chat-template", "chatml"])
        .output()
        .unwrap();
    assert!(!st.status.success());
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(!err.contains("chat template"), "{err}");
}

#[test]
fn bad_inputs_exit_nonzero_with_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let st = airavata().arg("inspect").arg(&junk).output().unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("invalid GGUF"));

    let st = airavata()
        .args(["convert", "./no/such/dir"])
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("no such directory"));

    let st = airavata()
        .args(["convert", "x", "--scheme", "q3"])
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("unknown scheme"));
}

/// `serve` with stderr in a file (not a terminal): the log has its levels but
/// no ANSI colour codes.
#[test]
fn serve_log_file_has_no_ansi_colours() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = airavata::synth::tiny_test_gguf(tmp.path()).expect("tiny gguf");
    let (mut child, _, text) = start_serve(
        tmp.path(),
        &gguf,
        &["--ctx-size", "256"],
        |c| {
            c.env_remove("RUST_LOG")
                // colours off by our check, not by the environment
                .env_remove("NO_COLOR");
        },
        &["listening on http://", "model ready"],
        60,
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(text.contains(" INFO "), "{text}");
    // No --host: loopback only.
    assert!(
        text.contains("listening on http://127.0.0.1:"),
        "serve's default host is not 127.0.0.1:\n{text}"
    );
    assert!(
        !text.contains("\x1b["),
        "ANSI escape in a log file:\n{text:?}"
    );
}

/// SIGTERM (what Kubernetes sends a pod it stops) makes `serve` drain and exit
/// cleanly, as deploy/k8s's grace period expects, not die mid-request.
#[cfg(unix)]
#[test]
fn serve_shuts_down_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = airavata::synth::tiny_test_gguf(tmp.path()).expect("tiny gguf");
    let (mut child, log_path, _) = start_serve(
        tmp.path(),
        &gguf,
        &["--ctx-size", "256"],
        |c| {
            c.env("RUST_LOG", "info");
        },
        &["model ready"],
        60,
    );
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        status.success(),
        "serve did not exit cleanly on SIGTERM ({status}):\n{text}"
    );
    assert!(
        text.contains("shutting down: draining in-flight requests"),
        "{text}"
    );
}

/// Starts `serve MODEL --port 0 --threads 2 --no-webui ARGS` with its stderr
/// in `DIR/serve.log`, the command adjusted by `setup` (its environment), and
/// waits until the log holds every one of `ready`; panics with the log when
/// serve exits or `secs` pass first. Returns the child, the log's path and
/// the log so far.
fn start_serve(
    dir: &std::path::Path,
    model: &std::path::Path,
    args: &[&str],
    setup: impl FnOnce(&mut Command),
    ready: &[&str],
    secs: u64,
) -> (std::process::Child, std::path::PathBuf, String) {
    let log_path = dir.join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = airavata();
    cmd.arg("serve")
        .arg(model)
        .args(["--port", "0", "--threads", "2", "--no-webui"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(log);
    setup(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if ready.iter().all(|m| text.contains(m)) {
            return (child, log_path, text);
        }
        if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("serve did not start and load:\n{text}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Runs `serve MODEL ARGS` with llama.cpp's log on until the model is ready;
/// returns the log.
fn serve_log(model: &std::path::Path, args: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, _, text) = start_serve(
        tmp.path(),
        model,
        args,
        |c| {
            c.env("RUST_LOG", "info,llama-cpp-2=info");
        },
        &["model ready"],
        120,
    );
    child.kill().unwrap();
    child.wait().unwrap();
    text
}

/// The last number before `unit` in the first line containing `marker`.
fn number_before(text: &str, marker: &str, unit: &str) -> f64 {
    let at = text
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no line with {marker:?}:\n{text}"));
    let end = at
        .find(unit)
        .unwrap_or_else(|| panic!("no {unit:?} in {at:?}"));
    at[..end]
        .rsplit(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|w| !w.is_empty())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number before {unit:?} in {at:?}"))
}

/// The startup line states the KV cache's bytes per token and in all, and
/// they are what llama.cpp allocates (its own `llama_kv_cache: size = … MiB`
/// line): the tiny model with an f16 cache, and SmolLM2 (GQA) with q8_0.
#[test]
fn serve_states_the_kv_bytes_llama_cpp_allocates() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = airavata::synth::tiny_test_gguf(tmp.path()).expect("tiny gguf");
    let mut cases = vec![(tiny, vec!["--ctx-size", "8192", "--parallel", "2"])];
    if let Some((q4, _)) = common::smollm2("serve_states_the_kv_bytes_llama_cpp_allocates") {
        cases.push((
            q4,
            vec![
                "--ctx-size",
                "4096",
                "--parallel",
                "2",
                "--cache-type-k",
                "q8_0",
                "--cache-type-v",
                "q8_0",
            ],
        ));
    }
    for (model, args) in cases {
        let text = serve_log(&model, &args);
        let llama_mib = number_before(&text, " cells,", " MiB (");
        let ours_mib = number_before(&text, "/token, ", " MiB for");
        let n_ctx: f64 = args[1].parse().unwrap();
        assert!(
            (llama_mib - ours_mib).abs() <= 0.051,
            "llama.cpp allocates {llama_mib} MiB, we state {ours_mib} MiB:\n{text}"
        );
        let per_token = number_before(&text, "/token, ", "/token");
        let unit = if text.contains(" B/token") {
            1.0
        } else {
            1024.0
        };
        assert!(
            (per_token * unit * n_ctx / 1048576.0 - llama_mib).abs() <= 0.01 * llama_mib + 0.01,
            "{per_token} per token × {n_ctx} is not {llama_mib} MiB:\n{text}"
        );
    }
}

/// `eval` with stderr not a terminal: plain progress lines (chunks, tokens,
/// ETA) for the first and the last chunk, no bar's carriage returns.
#[test]
fn eval_prints_progress_lines_when_not_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = airavata::synth::tiny_test_gguf(tmp.path()).expect("tiny gguf");
    let text = tmp.path().join("text.txt");
    let para = "भारत एक विशाल देश है। The quick brown fox jumps over the lazy dog. ";
    std::fs::write(&text, para.repeat(40)).unwrap();
    let out = airavata()
        .arg("eval")
        .arg("--base")
        .arg(&gguf)
        .arg("--model")
        .arg(&gguf)
        .arg("--text")
        .arg(&text)
        .args(["--ctx", "32", "--chunks", "3", "--threads", "2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("eval: ")).collect();
    assert!(
        lines
            .first()
            .is_some_and(|l| l.starts_with("eval: 1/3 chunks, 32/96 tokens,")),
        "{err}"
    );
    assert!(
        lines.last().is_some_and(
            |l| l.starts_with("eval: 3/3 chunks, 96/96 tokens,") && l.ends_with("ETA 0.0 s")
        ),
        "{err}"
    );
    assert!(
        lines.iter().all(|l| l.contains(" s elapsed, ETA ")),
        "{err}"
    );
    assert!(!err.contains('\r') && !err.contains("\x1b["), "{err:?}");
}
