//! The default 4-bit scheme end to end: type policy, byte equality with
//! llama.cpp's own quantizer (`llama_model_quantize`, as `llama-quantize
//! --pure`) in reference mode, file size, and generation through llama-cpp-2.

mod common;

use airavata::convert::{self, Scheme, TypeOverride, TypePolicy};
use airavata::gguf::{GgmlType, GgufFile};
use airavata::quant::QuantMode;
use airavata::safetensors::Dtype;
use airavata::synth::{self, SynthOptions};
use llama_cpp_2::token::LlamaToken;
use llama_cpp_sys_2 as sys;
use std::ffi::CString;
use std::path::{Path, PathBuf};

fn synth_dir(dir: &Path, cfg: serde_json::Value) -> PathBuf {
    let hf = dir.join("hf");
    synth::write_checkpoint(
        &hf,
        &SynthOptions {
            config: cfg,
            dtype: Dtype::BF16,
            shards: 2,
            seed: 9,
            std: 0.08,
            sp_pieces: None,
        },
    )
    .unwrap();
    hf
}

fn convert(hf: &Path, out: &Path, policy: TypePolicy, mode: QuantMode) -> convert::ConvertReport {
    common::convert(hf, out, policy, mode)
}

fn nf4() -> TypePolicy {
    TypePolicy {
        scheme: Scheme::Nf4,
        ..Default::default()
    }
}

/// llama.cpp's quantizer: IQ4_XS everywhere (pure), output Q6_K, embeddings IQ4_XS.
fn llama_quantize(src: &Path, dst: &Path) {
    common::backend();
    let (i, o) = (
        CString::new(src.to_str().unwrap()).unwrap(),
        CString::new(dst.to_str().unwrap()).unwrap(),
    );
    // SAFETY: FFI into llama.cpp with valid NUL-terminated paths and a
    // params struct initialised by llama.cpp's own default constructor.
    let rc = unsafe {
        let mut p = sys::llama_model_quantize_default_params();
        p.nthread = 2;
        p.ftype = sys::LLAMA_FTYPE_MOSTLY_IQ4_XS;
        p.output_tensor_type = sys::GGML_TYPE_Q6_K;
        p.token_embedding_type = sys::GGML_TYPE_IQ4_XS;
        p.pure_ = true;
        sys::llama_model_quantize(i.as_ptr(), o.as_ptr(), &p)
    };
    assert_eq!(rc, 0, "llama_model_quantize failed");
}

#[test]
fn reference_nf4_is_byte_identical_to_llama_quantize_pure() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = synth_dir(tmp.path(), synth::tiny_config());
    let f32_path = tmp.path().join("f32.gguf");
    convert(
        &hf,
        &f32_path,
        TypePolicy {
            scheme: Scheme::F32,
            ..Default::default()
        },
        QuantMode::Reference,
    );
    let theirs_path = tmp.path().join("llama-quantize.gguf");
    llama_quantize(&f32_path, &theirs_path);
    let ours_path = tmp.path().join("ours.gguf");
    convert(&hf, &ours_path, nf4(), QuantMode::Reference);

    let (ours, theirs) = (
        GgufFile::open(&ours_path).unwrap(),
        GgufFile::open(&theirs_path).unwrap(),
    );
    assert_eq!(ours.tensors.len(), theirs.tensors.len());
    for t in &theirs.tensors {
        let o = ours
            .tensor(&t.name)
            .unwrap_or_else(|| panic!("missing {}", t.name));
        assert_eq!((o.ty, &o.dims), (t.ty, &t.dims), "{}", t.name);
        assert!(
            ours.tensor_data(o) == theirs.tensor_data(t),
            "{} differs from llama-quantize",
            t.name
        );
    }
    assert_eq!(ours.tensor("output.weight").unwrap().ty, GgmlType::Q6K);
    assert_eq!(
        ours.tensor("token_embd.weight").unwrap().ty,
        GgmlType::Iq4Xs
    );
    assert_eq!(
        ours.tensor("blk.0.attn_norm.weight").unwrap().ty,
        GgmlType::F32
    );
    assert_eq!(ours.get_u64("general.file_type"), Some(30));
    let (a, b) = (
        std::fs::metadata(&ours_path).unwrap().len() as f64,
        std::fs::metadata(&theirs_path).unwrap().len() as f64,
    );
    eprintln!("size ours {a} vs llama-quantize {b}: ratio {:.4}", a / b);
    assert!(
        (a / b - 1.0).abs() < 0.01,
        "sizes differ by more than 1%: {a} vs {b}"
    );
}

#[test]
fn default_scheme_loads_generates_and_falls_back_by_row_length() {
    let tmp = tempfile::tempdir().unwrap();
    // Rows of 288 (hidden) and 320 (ffn): multiples of 32 but not of 256 → IQ4_NL.
    let mut cfg = synth::tiny_config();
    cfg["hidden_size"] = 288.into();
    cfg["intermediate_size"] = 320.into();
    let hf = synth_dir(tmp.path(), cfg);
    let out = tmp.path().join("nf4.gguf");
    let report = convert(&hf, &out, nf4(), QuantMode::Search);
    assert_eq!(report.types.get("IQ4_NL"), Some(&15), "{:?}", report.types);
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(
        f.tensor("blk.0.ffn_down.weight").unwrap().ty,
        GgmlType::Iq4Nl
    );
    // output rows of 288 cannot be Q6_K (256-blocks): Q8_0 fallback.
    assert_eq!(f.tensor("output.weight").unwrap().ty, GgmlType::Q8_0);
    let model = common::load_model(&out);
    let toks = common::greedy(&model, &[LlamaToken(1), LlamaToken(300)], 16);
    assert_eq!(toks.len(), 16);
    assert!(toks.iter().all(|t| t.0 >= 0 && t.0 < 1024));

    // The default 256-multiple model: search mode is the same size as reference.
    let hf2 = synth_dir(&tmp.path().join("b"), synth::tiny_config());
    let (s, r) = (tmp.path().join("s.gguf"), tmp.path().join("r.gguf"));
    convert(&hf2, &s, nf4(), QuantMode::Search);
    convert(&hf2, &r, nf4(), QuantMode::Reference);
    assert_eq!(
        std::fs::metadata(&s).unwrap().len(),
        std::fs::metadata(&r).unwrap().len()
    );
    let m = common::load_model(&s);
    assert_eq!(common::greedy(&m, &[LlamaToken(1)], 8).len(), 8);
}

#[test]
fn overrides_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = synth_dir(tmp.path(), synth::tiny_config());
    let out = tmp.path().join("o.gguf");
    let policy = TypePolicy {
        scheme: Scheme::Nf4,
        output_type: Some(GgmlType::Q8_0),
        embedding_type: Some(GgmlType::Q4K),
        overrides: vec![
            "blk.*.ffn_down*=Q6_K".parse::<TypeOverride>().unwrap(),
            "blk.1.attn_v.weight=Q4_0".parse().unwrap(),
        ],
        pure: false,
        fuse_qkv: false,
    };
    convert(&hf, &out, policy, QuantMode::Reference);
    let f = GgufFile::open(&out).unwrap();
    let ty = |n: &str| f.tensor(n).unwrap().ty;
    assert_eq!(ty("output.weight"), GgmlType::Q8_0);
    assert_eq!(ty("token_embd.weight"), GgmlType::Q4K);
    assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::Q6K);
    assert_eq!(ty("blk.1.ffn_down.weight"), GgmlType::Q6K);
    assert_eq!(ty("blk.1.attn_v.weight"), GgmlType::Q4_0);
    assert_eq!(ty("blk.0.attn_v.weight"), GgmlType::Iq4Xs);
    assert!("nonsense".parse::<TypeOverride>().is_err());
    assert!("x=Q9_Z"
        .parse::<TypeOverride>()
        .unwrap_err()
        .contains("unknown tensor type"));
    let m = common::load_model(&out);
    assert_eq!(common::greedy(&m, &[LlamaToken(1)], 4).len(), 4);
}

#[test]
fn stories260k_nf4_policy_on_odd_rows() {
    let Some(a) = common::assets("stories260k_nf4_policy_on_odd_rows") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s.gguf");
    convert(
        &a.join("stories260k-hf-derived"),
        &out,
        nf4(),
        QuantMode::Search,
    );
    let f = GgufFile::open(&out).unwrap();
    // hidden 64: IQ4_NL; ffn_down rows of 172: not a multiple of 32 → F16.
    assert_eq!(f.tensor("blk.0.attn_q.weight").unwrap().ty, GgmlType::Iq4Nl);
    assert_eq!(f.tensor("blk.0.ffn_down.weight").unwrap().ty, GgmlType::F16);
    assert_eq!(f.tensor("output.weight").unwrap().ty, GgmlType::Q8_0);
    let m = common::load_model(&out);
    let toks = common::greedy(&m, &[LlamaToken(1)], 20);
    let text = String::from_utf8_lossy(&m.vocab().detokenize(&toks, false, false)).into_owned();
    eprintln!("stories260K nf4 greedy: {text:?}");
    assert!(text.starts_with("Once upon a time"), "{text}");
}
