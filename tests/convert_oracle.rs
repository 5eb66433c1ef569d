//! Self-contained oracle: random GQA Llama in HF layout (two bf16 shards) →
//! our converter → llama.cpp logits, against a plain-Rust forward pass.

mod common;

use airavata::convert::Scheme;
use airavata::gguf::{GgmlType, GgufFile};
use airavata::quant::QuantMode;
use airavata::safetensors::Dtype;

fn convert_to(dir: &std::path::Path, out: &std::path::Path, scheme: Scheme) {
    common::convert(dir, out, common::scheme(scheme), QuantMode::Reference);
}

#[test]
fn f32_logits_match_plain_rust_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = common::tiny_checkpoint(tmp.path(), Dtype::BF16, 2, 42, 0.08);
    assert!(hf.join("model-00001-of-00002.safetensors").is_file());
    assert!(hf.join("model-00002-of-00002.safetensors").is_file());
    let out = tmp.path().join("tiny-f32.gguf");
    convert_to(&hf, &out, Scheme::F32);

    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.get_str("general.architecture"), Some("llama"));
    assert_eq!(f.get_u64("llama.attention.head_count_kv"), Some(2));
    assert_eq!(f.get_u64("llama.rope.dimension_count"), Some(64));
    assert_eq!(f.get_u64("general.file_type"), Some(0));
    assert!(f.tensors.iter().all(|t| t.ty == GgmlType::F32));
    assert_eq!(
        f.tensor("blk.1.attn_k.weight").unwrap().dims,
        vec![256, 128]
    );

    let model = common::load_model(&out);
    let prompt = "Hello world, नमस्ते भारत! how to manage time effectively?";
    let toks = model.vocab().tokenize(prompt.as_bytes(), true, false);
    assert!(toks.len() > 10, "prompt tokenized to {} tokens", toks.len());
    let ours = common::llama_logits(&model, &toks);
    let ids: Vec<i32> = toks.iter().map(|t| t.0).collect();
    let reference = common::reference::forward(&hf, &ids);
    let err = common::max_rel_err(&ours, &reference);
    eprintln!("tokens {}, max relative logit error {err:.3e}", ids.len());
    assert!(err <= 1e-4, "max relative error {err:.3e} > 1e-4");

    // Without the Q/K permutation the logits must differ: the test can fail.
    let spread: f32 = reference[5].iter().cloned().fold(f32::MIN, f32::max)
        - reference[5].iter().cloned().fold(f32::MAX, f32::min);
    assert!(
        spread > 0.1,
        "reference logits are degenerate (spread {spread})"
    );
}

#[test]
fn f16_bf16_q8_outputs_load_and_track_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = common::tiny_checkpoint(tmp.path(), Dtype::F32, 1, 3, 0.08);
    assert!(hf.join("model.safetensors").is_file());
    let ids = [1, 300, 301, 302, 400, 401, 402, 403];
    let reference = common::reference::forward(&hf, &ids);
    let toks: Vec<_> = ids
        .iter()
        .map(|&i| llama_cpp_2::token::LlamaToken(i))
        .collect();
    for (scheme, ty, tol) in [
        (Scheme::F16, GgmlType::F16, 2e-2),
        (Scheme::Bf16, GgmlType::Bf16, 5e-2),
        (Scheme::Q8_0, GgmlType::Q8_0, 1e-1),
    ] {
        let out = tmp.path().join(format!("t-{scheme}.gguf"));
        convert_to(&hf, &out, scheme);
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(f.tensor("blk.0.attn_q.weight").unwrap().ty, ty);
        assert_eq!(
            f.tensor("blk.0.attn_norm.weight").unwrap().ty,
            GgmlType::F32
        );
        assert_eq!(
            f.get_u64("general.file_type"),
            Some(airavata::gguf::llama_ftype_for(ty) as u64)
        );
        let model = common::load_model(&out);
        let err = common::max_rel_err(&common::llama_logits(&model, &toks), &reference);
        eprintln!("{scheme}: max relative logit error {err:.3e}");
        assert!(err < tol, "{scheme}: {err:.3e} ≥ {tol}");
    }
}

/// `--fuse-qkv` (issue 23): each layer's Q, K and V rows (Q and K rope-permuted
/// per head, GQA) written as one `attn_qkv` tensor that llama.cpp loads and
/// splits, with the same logits as the reference forward pass.
#[test]
fn fused_qkv_logits_match_plain_rust_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = common::tiny_checkpoint(tmp.path(), Dtype::BF16, 2, 42, 0.08);
    let (sep, fused) = (tmp.path().join("sep.gguf"), tmp.path().join("fused.gguf"));
    convert_to(&hf, &sep, Scheme::F32);
    let policy = airavata::convert::TypePolicy {
        fuse_qkv: true,
        ..common::scheme(Scheme::F32)
    };
    let r = common::convert(&hf, &fused, policy, QuantMode::Reference);
    assert_eq!(r.n_tensors, common::assert_fused_qkv(&sep, &fused));
    let model = common::load_model(&fused);
    let toks = model.vocab().tokenize(
        "Hello world, नमस्ते भारत! how to manage time?".as_bytes(),
        true,
        false,
    );
    let ids: Vec<i32> = toks.iter().map(|t| t.0).collect();
    let reference = common::reference::forward(&hf, &ids);
    let err = common::max_rel_err(&common::llama_logits(&model, &toks), &reference);
    assert!(err <= 1e-4, "max relative error {err:.3e} > 1e-4");
}
