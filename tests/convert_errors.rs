//! Bad input gets a clear error naming the file and tensor, and no output
//! file (nor a partial one) is left behind.

mod common;

use airavata::convert::{self, ConvertError, ConvertOptions, Scheme, TypePolicy};
use airavata::quant::QuantMode;
use airavata::safetensors::{self, Dtype, SafetensorsFile, TensorHeader};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

fn fresh(dir: &Path) -> PathBuf {
    common::tiny_checkpoint(dir, Dtype::BF16, 2, 5, 0.05)
}

fn run(hf: &Path, out_dir: &Path) -> Result<(), ConvertError> {
    run_with(hf, out_dir, &AtomicBool::new(false))
}

fn run_with(hf: &Path, out_dir: &Path, cancel: &AtomicBool) -> Result<(), ConvertError> {
    let opts = ConvertOptions {
        input: hf.to_path_buf(),
        output: out_dir.join("out.gguf"),
        policy: TypePolicy {
            scheme: Scheme::F16,
            ..Default::default()
        },
        quantizer: Some(QuantMode::Reference),
        calibrate: Default::default(),
        overwrite: false,
        progress: false,
    };
    convert::convert(&opts, &convert::Silent, cancel).map(|_| ())
}

/// Convert, expect failure, check nothing was left in `out_dir`; return the message.
fn fails(hf: &Path) -> String {
    let out = tempfile::tempdir().unwrap();
    let e = run(hf, out.path()).expect_err("conversion should fail");
    let left: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
    e.to_string()
}

/// Rewrite one shard through `edit`, keeping the index consistent.
fn rewrite_shard(hf: &Path, shard: &str, edit: impl FnOnce(&mut Vec<(TensorHeader, Vec<u8>)>)) {
    let path = hf.join(shard);
    let f = SafetensorsFile::open(&path).unwrap();
    let mut entries: Vec<(TensorHeader, Vec<u8>)> = f
        .tensors
        .values()
        .map(|e| {
            let bytes = f.map(e).unwrap().bytes().to_vec();
            (
                TensorHeader {
                    name: e.name.clone(),
                    dtype: e.dtype,
                    shape: e.shape.clone(),
                },
                bytes,
            )
        })
        .collect();
    drop(f);
    edit(&mut entries);
    let headers: Vec<TensorHeader> = entries.iter().map(|e| e.0.clone()).collect();
    safetensors::write_file(&path, &headers, &[], |i| entries[i].1.clone()).unwrap();
    let idx_path = hf.join("model.safetensors.index.json");
    let mut idx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&idx_path).unwrap()).unwrap();
    let map = idx["weight_map"].as_object_mut().unwrap();
    map.retain(|_, v| v != shard);
    for h in &headers {
        map.insert(h.name.clone(), shard.into());
    }
    std::fs::write(&idx_path, serde_json::to_string(&idx).unwrap()).unwrap();
}

const SHARD2: &str = "model-00002-of-00002.safetensors";

fn shard_with(hf: &Path, name: &str) -> String {
    let idx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(hf.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    idx["weight_map"][name].as_str().unwrap().to_string()
}

#[test]
fn good_checkpoint_converts() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = fresh(tmp.path());
    let out = tempfile::tempdir().unwrap();
    run(&hf, out.path()).unwrap();
    assert!(out.path().join("out.gguf").is_file());
    // A second run refuses to overwrite and leaves the file intact.
    let before = std::fs::read(out.path().join("out.gguf")).unwrap();
    let e = run(&hf, out.path()).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(std::fs::read(out.path().join("out.gguf")).unwrap(), before);
}

#[test]
fn missing_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = fresh(tmp.path());
    let shard = shard_with(&hf, "model.layers.1.mlp.up_proj.weight");
    rewrite_shard(&hf, &shard, |v| {
        v.retain(|e| e.0.name != "model.layers.1.mlp.up_proj.weight")
    });
    let e = fails(&hf);
    assert!(
        e.contains("missing tensor model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );
}

#[test]
fn extra_tensor_is_named_with_its_file() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = fresh(tmp.path());
    rewrite_shard(&hf, SHARD2, |v| {
        v.push((
            TensorHeader {
                name: "model.layers.0.self_attn.extra.weight".into(),
                dtype: Dtype::F32,
                shape: vec![2],
            },
            vec![0u8; 8],
        ))
    });
    let e = fails(&hf);
    assert!(
        e.contains("unexpected tensor model.layers.0.self_attn.extra.weight"),
        "{e}"
    );
    assert!(e.contains(SHARD2), "{e}");
}

#[test]
fn shape_disagreeing_with_config_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = fresh(tmp.path());
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    cfg["intermediate_size"] = 384.into();
    std::fs::write(hf.join("config.json"), cfg.to_string()).unwrap();
    let e = fails(&hf);
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight has shape [512, 256]"),
        "{e}"
    );
    assert!(e.contains("[384, 256]"), "{e}");
}

#[test]
fn unsupported_dtype_and_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = fresh(tmp.path());
    let name = "model.layers.0.input_layernorm.weight";
    let shard = shard_with(&hf, name);
    rewrite_shard(&hf, &shard, |v| {
        for e in v.iter_mut() {
            if e.0.name == name {
                e.0.dtype = Dtype::I16;
            }
        }
    });
    let e = fails(&hf);
    assert!(
        e.contains(name) && e.contains("unsupported dtype I16"),
        "{e}"
    );

    let hf2 = fresh(&tmp.path().join("b"));
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf2.join("config.json")).unwrap()).unwrap();
    cfg["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    std::fs::write(hf2.join("config.json"), cfg.to_string()).unwrap();
    let e = fails(&hf2);
    assert!(
        e.contains("config.json") && e.contains("unsupported architecture"),
        "{e}"
    );
}

#[test]
fn nan_and_inf_weights_are_located() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = fresh(tmp.path());
    let name = "model.layers.1.self_attn.v_proj.weight";
    let shard = shard_with(&hf, name);
    rewrite_shard(&hf, &shard, |v| {
        for e in v.iter_mut() {
            if e.0.name == name {
                // bf16 NaN at element 1000
                e.1[2000] = 0xc0;
                e.1[2001] = 0x7f;
            }
        }
    });
    let e = fails(&hf);
    assert!(
        e.contains(name) && e.contains("non-finite") && e.contains("element 1000"),
        "{e}"
    );
    assert!(e.contains(&shard), "{e}");
}

#[test]
fn truncated_and_lying_safetensors_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = fresh(tmp.path());
    let p = hf.join(SHARD2);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
    let e = fails(&hf);
    assert!(e.contains(SHARD2) && e.contains("run past the end"), "{e}");

    std::fs::write(&p, &bytes[..5]).unwrap();
    assert!(fails(&hf).contains("too short"));

    // Header length larger than the file.
    let mut b = bytes.clone();
    b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    assert!(fails(&hf).contains("header length"));

    // Overlapping ranges.
    let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + hlen]).unwrap();
    let mut h = header.clone();
    let names: Vec<String> = h
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let first = h[&names[0]]["data_offsets"].clone();
    let n0 = first[1].as_u64().unwrap() - first[0].as_u64().unwrap();
    // Make a same-sized tensor start inside the first one.
    let victim = names.iter().skip(1).find(|n| {
        let o = &h[n.as_str()]["data_offsets"];
        o[1].as_u64().unwrap() - o[0].as_u64().unwrap() <= n0
    });
    let v = victim.expect("a tensor no larger than the first");
    {
        let o = &h[v.as_str()]["data_offsets"];
        let len = o[1].as_u64().unwrap() - o[0].as_u64().unwrap();
        let start = first[0].as_u64().unwrap();
        h[v.as_str()]["data_offsets"] = serde_json::json!([start, start + len]);
        let js = serde_json::to_vec(&h).unwrap();
        {
            // Data offsets are relative to the data section: keep the data, swap the header.
            let mut b = (js.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(&js);
            b.extend_from_slice(&bytes[8 + hlen..]);
            std::fs::write(&p, &b).unwrap();
            let e = fails(&hf);
            assert!(e.contains("overlap"), "{e}");
        }
    }
}

#[test]
fn unreadable_tokenizer_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = fresh(tmp.path());
    std::fs::write(hf.join("tokenizer.model"), b"\x0a\xff\xff\xff\xff\xff").unwrap();
    let e = fails(&hf);
    assert!(
        e.contains("tokenizer.model") && e.contains("unreadable tokenizer"),
        "{e}"
    );
    std::fs::remove_file(hf.join("tokenizer.model")).unwrap();
    let e = fails(&hf);
    assert!(e.contains("no tokenizer.model or tokenizer.json"), "{e}");
}

#[test]
fn cancelled_conversion_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = fresh(tmp.path());
    let out = tempfile::tempdir().unwrap();
    let e = run_with(&hf, out.path(), &AtomicBool::new(true)).unwrap_err();
    assert!(matches!(e, ConvertError::Cancelled));
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// The safetensors header parser never panics and never accepts ranges
    /// outside the data.
    #[test]
    fn safetensors_header_fuzz(
        start in 0u64..200, len in 0u64..200, dlen in 0u64..300,
        dtype in prop::sample::select(vec!["F32", "BF16", "F16", "U8", "I64", "XX"]),
        shape in proptest::collection::vec(0usize..20, 0..4),
        junk in "\\PC{0,20}",
    ) {
        let h = format!(
            r#"{{"t": {{"dtype": "{dtype}", "shape": {shape:?}, "data_offsets": [{start}, {}]}}, "__metadata__": {{"j": {junk:?}}}}}"#,
            start + len
        );
        if let Ok((t, _)) = safetensors::parse_header(h.as_bytes(), 8, 8 + dlen) {
            let e = &t["t"];
            prop_assert!(e.end <= 8 + dlen && e.start <= e.end);
            prop_assert_eq!((e.end - e.start) as usize, e.numel() * e.dtype.size());
        }
        let _ = safetensors::parse_header(junk.as_bytes(), 8, 100);
    }
}
