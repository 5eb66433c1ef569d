//! Shared helpers for integration tests.
#![allow(dead_code)]

pub mod assets;
pub mod pyenv;
pub mod reference;

#[allow(unused_imports)] // each test binary uses some of these
pub use assets::{asset, assets};

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

/// Whether this run is CI (`CI` set to something other than empty, `0` or
/// `false`): there a missing tool or download fails a test instead of
/// skipping it.
pub fn in_ci() -> bool {
    assets::ci_value_means_ci(std::env::var_os("CI").as_deref())
}

/// The process-wide llama.cpp backend (it may be initialised only once; the
/// library's calibration borrows the same one).
pub fn backend() -> &'static LlamaBackend {
    airavata::engine::llama_backend(None).expect("llama backend init")
}

pub fn load_model(path: &Path) -> LlamaModel {
    LlamaModel::load_from_file(backend(), path, &LlamaModelParams::default())
        .unwrap_or_else(|e| panic!("llama.cpp failed to load {}: {e}", path.display()))
}

pub fn vocab_only_model(path: &Path) -> LlamaModel {
    LlamaModel::load_from_file(
        backend(),
        path,
        &LlamaModelParams::default().with_vocab_only(true),
    )
    .unwrap_or_else(|e| panic!("llama.cpp failed to load {}: {e}", path.display()))
}

/// Logits of every position of `tokens`, computed by llama.cpp.
pub fn llama_logits(model: &LlamaModel, tokens: &[LlamaToken]) -> Vec<Vec<f32>> {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(256))
        .with_n_batch(256)
        .with_n_threads(2)
        .with_n_threads_batch(2)
        // F32 KV cache and no flash attention: exact f32 math for the oracle.
        .with_type_k(KvCacheType::F32)
        .with_type_v(KvCacheType::F32)
        .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED);
    let mut ctx = model.new_context(backend(), params).expect("context");
    let mut batch = LlamaBatch::new(tokens.len(), 1);
    for (i, t) in tokens.iter().enumerate() {
        batch.add(*t, i as i32, &[0], true).expect("batch add");
    }
    ctx.decode(&mut batch).expect("decode");
    (0..tokens.len())
        .map(|i| ctx.get_logits_ith(i as i32).to_vec())
        .collect()
}

/// Greedy decode `n` tokens after `prompt` with llama.cpp.
pub fn greedy(model: &LlamaModel, prompt: &[LlamaToken], n: usize) -> Vec<LlamaToken> {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new((prompt.len() + n + 8) as u32))
        .with_n_threads(2)
        .with_n_threads_batch(2);
    let mut ctx = model.new_context(backend(), params).expect("context");
    let mut batch = LlamaBatch::new(prompt.len().max(1), 1);
    for (i, t) in prompt.iter().enumerate() {
        batch
            .add(*t, i as i32, &[0], i + 1 == prompt.len())
            .expect("batch add");
    }
    ctx.decode(&mut batch).expect("decode");
    let mut out = Vec::new();
    for pos in prompt.len() as i32..(prompt.len() + n) as i32 {
        let logits = ctx.get_logits_ith(batch.n_tokens() - 1);
        let (best, _) =
            logits
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv {
                        (i, v)
                    } else {
                        (bi, bv)
                    }
                });
        let t = LlamaToken(best as i32);
        out.push(t);
        batch.clear();
        batch.add(t, pos, &[0], true).expect("batch add");
        ctx.decode(&mut batch).expect("decode");
    }
    out
}

/// `--fuse-qkv`'s layout: for every layer of `separate`, `fused` holds one
/// `attn_qkv` with the type of its `attn_q` and the bytes of its `attn_q`,
/// `attn_k` and `attn_v` one after another (rows summed), and none of the
/// three. Returns the number of tensors in `fused`.
pub fn assert_fused_qkv(separate: &Path, fused: &Path) -> usize {
    use airavata::gguf::GgufFile;
    let (a, b) = (
        GgufFile::open(separate).unwrap(),
        GgufFile::open(fused).unwrap(),
    );
    let n_layer = a.get_u64("llama.block_count").unwrap() as usize;
    assert!(n_layer >= 2);
    assert_eq!(b.tensors.len(), a.tensors.len() - 2 * n_layer);
    for l in 0..n_layer {
        let parts: Vec<_> = ["attn_q", "attn_k", "attn_v"]
            .iter()
            .map(|n| {
                let name = format!("blk.{l}.{n}.weight");
                assert!(b.tensor(&name).is_none(), "{name} left beside attn_qkv");
                a.tensor(&name).unwrap()
            })
            .collect();
        let t = b.tensor(&format!("blk.{l}.attn_qkv.weight")).unwrap();
        let rows: u64 = parts.iter().map(|p| p.dims[1]).sum();
        assert_eq!(t.dims, vec![parts[0].dims[0], rows]);
        assert_eq!(t.ty, parts[0].ty);
        let want: Vec<u8> = parts
            .iter()
            .flat_map(|p| a.tensor_data(p).to_vec())
            .collect();
        assert!(
            b.tensor_data(t) == &want[..],
            "layer {l}: fused bytes differ"
        );
    }
    b.tensors.len()
}

/// max |a − b| / max |b| over all values.
pub fn max_rel_err(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let mut num = 0f64;
    let mut den = 0f64;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len());
        for (p, q) in x.iter().zip(y) {
            num = num.max((*p as f64 - *q as f64).abs());
            den = den.max((*q as f64).abs());
        }
    }
    num / den.max(1e-30)
}

pub mod server;

/// Convert `input` to `output` with `policy` (overwriting), panicking on error.
pub fn convert(
    input: &Path,
    output: &Path,
    policy: airavata::convert::TypePolicy,
    mode: airavata::quant::QuantMode,
) -> airavata::convert::ConvertReport {
    let opts = airavata::convert::ConvertOptions {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        policy,
        quantizer: Some(mode),
        calibrate: Default::default(),
        overwrite: true,
        progress: false,
    };
    airavata::convert::convert(
        &opts,
        &airavata::convert::Silent,
        &std::sync::atomic::AtomicBool::new(false),
    )
    .unwrap_or_else(|e| panic!("converting {}: {e}", input.display()))
}

/// The type policy of a plain scheme.
/// A tiny random-weight checkpoint (`synth::tiny_config`, its SentencePiece
/// vocab) written to `dir/hf`: the input of the conversion tests.
pub fn tiny_checkpoint(
    dir: &Path,
    dtype: airavata::safetensors::Dtype,
    shards: usize,
    seed: u64,
    std: f32,
) -> PathBuf {
    let hf = dir.join("hf");
    airavata::synth::write_checkpoint(
        &hf,
        &airavata::synth::SynthOptions {
            config: airavata::synth::tiny_config(),
            dtype,
            shards,
            seed,
            std,
            sp_pieces: None,
        },
    )
    .unwrap_or_else(|e| panic!("synthesize a checkpoint in {}: {e}", hf.display()));
    hf
}

pub fn scheme(s: airavata::convert::Scheme) -> airavata::convert::TypePolicy {
    airavata::convert::TypePolicy {
        scheme: s,
        ..Default::default()
    }
}

/// The real trained model SmolLM2-135M-Instruct: `(Q4_1 as shipped, F16 base)`.
/// Downloaded (sha256-checked) by `scripts/fetch-smollm2.sh` into the
/// git-ignored `vendor/models/smollm2/`; the F16 base is made with our own
/// `quantize --allow-requantize --scheme f16`. None (after printing
/// `skipped: …`) only when the download itself fails.
pub fn smollm2(test: &str) -> Option<(PathBuf, PathBuf)> {
    static READY: std::sync::Mutex<Option<Result<(PathBuf, PathBuf), String>>> =
        std::sync::Mutex::new(None);
    let mut g = READY.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        *g = Some(fetch_smollm2());
    }
    match g.as_ref().expect("set above") {
        Ok(p) => Some(p.clone()),
        Err(e) => {
            eprintln!("skipped {test}: SmolLM2 download failed: {e}");
            None
        }
    }
}

fn fetch_smollm2() -> Result<(PathBuf, PathBuf), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("vendor/models/smollm2");
    let q4 = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let f16 = dir.join("SmolLM2-135M-Instruct.F16.gguf");
    // The script verifies the cached file's sha256, or downloads it.
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/fetch-smollm2.sh"))
        .arg("/nonexistent") // download only: the F16 base is made below
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() || !q4.is_file() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    if !f16.is_file() {
        let opts = airavata::convert::QuantizeOptions {
            input: q4.clone(),
            output: f16.clone(),
            policy: scheme(airavata::convert::Scheme::F16),
            quantizer: None,
            calibrate: Default::default(),
            allow_requantize: true,
            overwrite: true,
            progress: false,
        };
        airavata::convert::quantize_gguf(
            &opts,
            &airavata::convert::Silent,
            &std::sync::atomic::AtomicBool::new(false),
        )
        .map_err(|e| e.to_string())?;
    }
    Ok((q4, f16))
}

/// llama.cpp's own tool `name` built by `scripts/build-llama-tools.sh`, if present.
pub fn llama_tool(name: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("vendor/llama.cpp/build-cpu/bin")
        .join(name);
    p.is_file().then_some(p)
}
