//! The old app's checkpoint as input: a transformers + bitsandbytes NF4
//! (double-quant) safetensors checkpoint converts to the same GGUF as the
//! equivalent dequantized bf16 checkpoint.

mod common;

use airavata::bnb::{self, Nf4QuantizeOptions};
use airavata::convert::{self, ConvertOptions, Scheme, TypePolicy};
use airavata::gguf::GgufFile;
use airavata::quant::QuantMode;
use airavata::safetensors::{self, Checkpoint, Dtype, TensorHeader};
use airavata::synth::{self, SynthOptions};
use std::path::Path;
use std::sync::atomic::AtomicBool;

fn is_linear(name: &str) -> bool {
    name.contains(".self_attn.") || name.contains(".mlp.")
}

fn to_bf16_bytes(v: &[f32]) -> Vec<u8> {
    airavata::quant::quantize(
        airavata::gguf::GgmlType::Bf16,
        v,
        v.len(),
        None,
        QuantMode::Reference,
    )
    .unwrap()
}

fn convert_f32(dir: &Path, out: &Path) {
    common::convert(dir, out, common::scheme(Scheme::F32), QuantMode::Reference);
}

#[test]
fn bnb_nf4_checkpoint_converts_like_its_dequantized_twin() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    synth::write_checkpoint(
        &src,
        &SynthOptions {
            config: synth::tiny_config(),
            shards: 1,
            seed: 21,
            std: 0.05,
            ..Default::default()
        },
    )
    .unwrap();
    let ck = Checkpoint::open(&src).unwrap();
    let names: Vec<String> = ck.names().map(str::to_string).collect();

    // The old app's layout (bnb) and the dequantized twin (plain bf16).
    let (mut bnb_h, mut bnb_d) = (Vec::new(), Vec::new());
    let (mut twin_h, mut twin_d) = (Vec::new(), Vec::new());
    for name in &names {
        let (f, e) = ck.get(name).unwrap();
        let values = f.read_f32(e).unwrap();
        let raw = f.map(e).unwrap().bytes().to_vec();
        if is_linear(name) {
            let parts =
                bnb::quantize_nf4(name, &values, &e.shape, Nf4QuantizeOptions::default()).unwrap();
            let deq = bnb::dequantize_with(name, |n| {
                parts.iter().find(|p| p.name == n).map(|p| bnb::TensorData {
                    dtype: p.dtype.to_string(),
                    shape: p.shape.clone(),
                    data: p.data.clone(),
                })
            })
            .unwrap();
            assert_eq!(deq.shape, e.shape);
            let err: f32 = deq
                .data
                .iter()
                .zip(&values)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err > 0.0 && err < 0.05, "{name}: NF4 error {err}");
            twin_h.push(TensorHeader {
                name: name.clone(),
                dtype: Dtype::BF16,
                shape: e.shape.clone(),
            });
            twin_d.push(to_bf16_bytes(&deq.data));
            for p in parts {
                let dtype = if p.dtype == "U8" {
                    Dtype::U8
                } else {
                    Dtype::F32
                };
                bnb_h.push(TensorHeader {
                    name: p.name.clone(),
                    dtype,
                    shape: p.shape.clone(),
                });
                bnb_d.push(p.data);
            }
        } else {
            for (h, d) in [(&mut bnb_h, &mut bnb_d), (&mut twin_h, &mut twin_d)] {
                h.push(TensorHeader {
                    name: name.clone(),
                    dtype: e.dtype,
                    shape: e.shape.clone(),
                });
                d.push(raw.clone());
            }
        }
    }
    let (bnb_dir, twin_dir) = (tmp.path().join("bnb"), tmp.path().join("twin"));
    for (dir, h, d) in [(&bnb_dir, &bnb_h, &bnb_d), (&twin_dir, &twin_h, &twin_d)] {
        std::fs::create_dir_all(dir).unwrap();
        for f in [
            "config.json",
            "tokenizer.model",
            "tokenizer_config.json",
            "added_tokens.json",
        ] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        safetensors::write_file(
            &dir.join("model.safetensors"),
            h,
            &[("format", "pt")],
            |i| d[i].clone(),
        )
        .unwrap();
    }
    assert!(bnb::detect(
        &bnb_h.iter().map(|h| h.name.as_str()).collect::<Vec<_>>()
    ));

    let (a, b) = (tmp.path().join("bnb.gguf"), tmp.path().join("twin.gguf"));
    convert_f32(&bnb_dir, &a);
    convert_f32(&twin_dir, &b);
    let (ga, gb) = (GgufFile::open(&a).unwrap(), GgufFile::open(&b).unwrap());
    assert_eq!(ga.tensors.len(), gb.tensors.len());
    for t in &gb.tensors {
        let o = ga.tensor(&t.name).unwrap();
        assert!(ga.tensor_data(o) == gb.tensor_data(t), "{} differs", t.name);
    }
    // And the result runs.
    let m = common::load_model(&a);
    assert_eq!(
        common::greedy(&m, &[llama_cpp_2::token::LlamaToken(1)], 8).len(),
        8
    );

    // A damaged companion tensor is reported against its weight.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for f in [
        "config.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "added_tokens.json",
    ] {
        std::fs::copy(src.join(f), bad.join(f)).unwrap();
    }
    let keep: Vec<usize> = (0..bnb_h.len())
        .filter(|&i| bnb_h[i].name != "model.layers.0.mlp.up_proj.weight.absmax")
        .collect();
    let hh: Vec<TensorHeader> = keep.iter().map(|&i| bnb_h[i].clone()).collect();
    safetensors::write_file(&bad.join("model.safetensors"), &hh, &[], |i| {
        bnb_d[keep[i]].clone()
    })
    .unwrap();
    let e = convert::convert(
        &ConvertOptions {
            input: bad,
            output: tmp.path().join("bad.gguf"),
            policy: TypePolicy {
                scheme: Scheme::F32,
                ..Default::default()
            },
            quantizer: Some(QuantMode::Reference),
            calibrate: Default::default(),
            overwrite: false,
            progress: false,
        },
        &convert::Silent,
        &AtomicBool::new(false),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("model.layers.0.mlp.up_proj.weight"), "{e}");
    assert!(!tmp.path().join("bad.gguf").exists());
}
