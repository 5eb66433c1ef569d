//! Real-model checks on stories260K (need AIRAVATA_ASSETS; skipped otherwise).

mod common;

use airavata::convert::Scheme;
use airavata::gguf::GgufFile;
use airavata::quant::QuantMode;
use llama_cpp_2::token::LlamaToken;

fn convert_stories(out: &std::path::Path, assets: &std::path::Path) {
    common::convert(
        &assets.join("stories260k-hf-derived"),
        out,
        common::scheme(Scheme::F32),
        QuantMode::Reference,
    );
}

#[test]
fn stories260k_f32_tensors_equal_reference_gguf() {
    let Some(assets) = common::assets("stories260k_f32_tensors_equal_reference_gguf") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s.gguf");
    convert_stories(&out, &assets);
    let ours = GgufFile::open(&out).unwrap();
    let reference = GgufFile::open(assets.join("stories260k-gguf/stories260K.gguf")).unwrap();
    assert_eq!(ours.tensors.len(), reference.tensors.len());
    for rt in &reference.tensors {
        let ot = ours
            .tensor(&rt.name)
            .unwrap_or_else(|| panic!("our GGUF lacks {}", rt.name));
        assert_eq!(ot.dims, rt.dims, "{}", rt.name);
        assert_eq!(ot.ty, rt.ty, "{}", rt.name);
        assert!(
            ours.tensor_data(ot) == reference.tensor_data(rt),
            "tensor {} differs from the reference GGUF",
            rt.name
        );
    }
    for key in [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.scores",
        "tokenizer.ggml.token_type",
    ] {
        assert_eq!(ours.get(key), reference.get(key), "{key}");
    }
    for key in [
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.block_count",
        "llama.rope.dimension_count",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
    ] {
        assert_eq!(ours.get_u64(key), reference.get_u64(key), "{key}");
    }
}

#[test]
fn stories260k_greedy_200_matches_llama2c() {
    let Some(assets) = common::assets("stories260k_greedy_200_matches_llama2c") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s.gguf");
    convert_stories(&out, &assets);
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(assets.join("stories260k-llama2c/expected_greedy_200_ids.json"))
            .unwrap(),
    )
    .unwrap();
    let want: Vec<i32> = expected["greedy_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap() as i32)
        .collect();
    assert_eq!(want.len(), 200);
    let model = common::load_model(&out);
    let got: Vec<i32> = common::greedy(&model, &[LlamaToken(1)], 200)
        .iter()
        .map(|t| t.0)
        .collect();
    let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "greedy ids diverge at {first_diff:?}");
    let text = String::from_utf8(model.vocab().detokenize(
        &got.iter().map(|&i| LlamaToken(i)).collect::<Vec<_>>(),
        false,
        false,
    ))
    .unwrap();
    assert!(
        text.starts_with("Once upon a time, there was a little girl named Lily."),
        "{text}"
    );
}
