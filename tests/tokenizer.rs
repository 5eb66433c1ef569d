//! GGUF vocabularies built from tokenizer.model, checked through llama.cpp.

mod common;

use airavata::convert::Scheme;
use airavata::quant::QuantMode;
use airavata::safetensors::Dtype;
use airavata::synth::{self, SynthOptions};
use airavata::tokenizer::SpModel;
use std::path::{Path, PathBuf};

/// A tiny random model whose vocabulary is `tokenizer` (vocab_size pieces).
fn model_with_tokenizer(dir: &Path, tokenizer: Option<&Path>, vocab: usize) -> PathBuf {
    let mut cfg = synth::tiny_config();
    cfg["vocab_size"] = vocab.into();
    cfg["hidden_size"] = 64.into();
    cfg["intermediate_size"] = 128.into();
    cfg["num_hidden_layers"] = 1.into();
    let hf = dir.join("hf");
    synth::write_checkpoint(
        &hf,
        &SynthOptions {
            config: cfg,
            dtype: Dtype::F16,
            shards: 1,
            seed: 1,
            std: 0.02,
            sp_pieces: Some(vocab),
        },
    )
    .unwrap();
    if let Some(t) = tokenizer {
        std::fs::copy(t, hf.join("tokenizer.model")).unwrap();
    }
    let out = dir.join("vocab.gguf");
    common::convert(&hf, &out, common::scheme(Scheme::F16), QuantMode::Reference);
    out
}

const HINDI: &[&str] = &[
    "नमस्ते भारत",
    "मैं अपने समय प्रबंधन कौशल को कैसे सुधार सकता हूँ? मुझे पांच बिंदु बताएं।",
    "हिंदी में 123 अंक और English words, मिश्रित।",
    "क्षत्रिय ज्ञान श्री ॐ",
    "  दो  रिक्त  स्थान\nनई पंक्ति\tटैब",
];

fn round_trip(model: &llama_cpp_2::model::LlamaModel, s: &str) {
    let v = model.vocab();
    let with_bos = v.tokenize(s.as_bytes(), true, false);
    assert_eq!(with_bos[0].0, 1, "BOS first");
    let toks = v.tokenize(s.as_bytes(), false, false);
    assert_eq!(&with_bos[1..], &toks[..]);
    let back = v.detokenize(&toks, false, false);
    assert_eq!(
        String::from_utf8(back).expect("valid UTF-8"),
        s,
        "round trip of {s:?}"
    );
}

#[test]
fn llama2_tokenizer_matches_llama_cpp_vectors() {
    let Some(assets) = common::assets("llama2_tokenizer_matches_llama_cpp_vectors") else {
        return;
    };
    let dir = assets.join("llama2-tokenizer");
    let sp = SpModel::parse(&std::fs::read(dir.join("tokenizer.model")).unwrap()).unwrap();
    assert_eq!(sp.pieces.len(), 32000);
    assert_eq!(sp.pieces[15043].piece, "\u{2581}Hello");
    let tmp = tempfile::tempdir().unwrap();
    let gguf = model_with_tokenizer(tmp.path(), Some(&dir.join("tokenizer.model")), 32000);
    let model = common::vocab_only_model(&gguf);
    let inp = std::fs::read_to_string(dir.join("ggml-vocab-llama-spm.gguf.inp")).unwrap();
    let out = std::fs::read_to_string(dir.join("ggml-vocab-llama-spm.gguf.out")).unwrap();
    let mut cases: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    if cases.last() == Some(&"") {
        cases.pop();
    }
    let expected: Vec<Vec<i32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    // The files hold 46 cases (47 pieces when split naively, the last one
    // empty after the final separator); llama.cpp's reader sees 46.
    assert_eq!(cases.len(), 46);
    assert_eq!(expected.len(), cases.len());
    for (text, want) in cases.iter().zip(&expected) {
        let got: Vec<i32> = model
            .vocab()
            .tokenize(text.as_bytes(), false, false)
            .iter()
            .map(|t| t.0)
            .collect();
        assert_eq!(&got, want, "tokenizing {text:?}");
    }
    for s in HINDI {
        round_trip(&model, s);
    }
}

#[test]
fn devanagari_round_trips_through_synthetic_vocab() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = model_with_tokenizer(tmp.path(), None, 1024);
    let model = common::vocab_only_model(&gguf);
    let v = model.vocab();
    // Devanagari pieces of our vocabulary are used whole, not as bytes.
    let toks = v.tokenize("नमस्ते भारत".as_bytes(), false, false);
    let pieces: Vec<String> = toks
        .iter()
        .map(|t| String::from_utf8_lossy(&v.detokenize(&[*t], false, false)).into_owned())
        .collect();
    assert!(pieces.iter().any(|p| p.contains("नमस्ते")), "{pieces:?}");
    for s in HINDI {
        round_trip(&model, s);
    }
    // Characters outside the vocabulary fall back to bytes and still round-trip.
    round_trip(&model, "ঌ ৠ 𑀅 emoji 🙏");
}

#[test]
fn sentencepiece_model_encode_parse_round_trip() {
    let sp = synth::synth_vocab(600);
    let bytes = sp.encode();
    let back = SpModel::parse(&bytes).unwrap();
    assert_eq!(back, sp);
    assert!(SpModel::parse(&bytes[..bytes.len() / 2]).is_err());
    assert!(SpModel::parse(b"not a protobuf at all \xff\xff\xff").is_err());
}
