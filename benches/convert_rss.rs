//! Peak memory and time of `airavata convert` on a small synthetic model and
//! one 4× larger: peak RSS must not grow with model size.
//!
//! cargo bench --bench convert_rss [-- SCHEME]     (default scheme nf4)

use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn config(layers: usize, vocab: usize) -> serde_json::Value {
    let mut c = airavata::synth::tiny_config();
    c["hidden_size"] = 1024.into();
    c["intermediate_size"] = 2816.into();
    c["num_attention_heads"] = 8.into();
    c["num_key_value_heads"] = 8.into();
    c["num_hidden_layers"] = layers.into();
    c["vocab_size"] = vocab.into();
    c
}

/// Run a command, returning (seconds, peak RSS of the child in KiB).
fn measure(cmd: &mut Command) -> (f64, i64) {
    let t0 = Instant::now();
    #[allow(clippy::zombie_processes)] // reaped below by wait4, which also reports rusage
    let child = cmd.spawn().expect("spawn airavata");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain zeroed C struct filled in by wait4 for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our un-reaped child; pointers are to live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "convert failed"
    );
    (t0.elapsed().as_secs_f64(), ru.ru_maxrss)
}

fn main() {
    let scheme = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "nf4".to_string());
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = env!("CARGO_BIN_EXE_airavata");
    println!("| model | params | bf16 size | convert time | peak RSS |");
    println!("|---|---|---|---|---|");
    let mut rss = Vec::new();
    for (name, layers, vocab) in [("small", 4usize, 4096usize), ("4x", 16, 16384)] {
        let dir = tmp.path().join(name);
        airavata::synth::write_checkpoint(
            &dir,
            &airavata::synth::SynthOptions {
                config: config(layers, vocab),
                shards: 2,
                ..Default::default()
            },
        )
        .expect("synth");
        let size: u64 = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum();
        let out = tmp.path().join(format!("{name}.gguf"));
        let (secs, kib) = measure(
            Command::new(bin)
                .args(["convert", "-q", "--scheme", &scheme, "-o"])
                .arg(&out)
                .arg(&dir),
        );
        let params = size / 2;
        println!(
            "| {name} | {:.0} M | {:.0} MiB | {secs:.2} s | {:.0} MiB |",
            params as f64 / 1e6,
            size as f64 / (1 << 20) as f64,
            kib as f64 / 1024.0
        );
        rss.push(kib);
        let _ = std::fs::remove_file(Path::new(&out));
    }
    println!(
        "\npeak RSS ratio 4x/small = {:.2} (model size ratio 4.0), scheme {scheme}",
        rss[1] as f64 / rss[0] as f64
    );
}
