//! `airavata quantize` on small synthetic models: bad input is a clear error
//! naming the tensor with no output left behind; already-quantized input
//! needs --allow-requantize; `--scheme bnb-nf4` writes the exact bitsandbytes
//! NF4 + double-quant round trip; `convert` and `quantize` agree.

mod common;

use airavata::bnb::{self, WeightDtype};
use airavata::convert::{self, Calibrate, ConvertError, QuantizeOptions, Scheme, TypePolicy};
use airavata::gguf::{GgmlType, GgufFile};
use airavata::safetensors::{Checkpoint, Dtype};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

fn hf(dir: &Path) -> PathBuf {
    common::tiny_checkpoint(dir, Dtype::BF16, 2, 11, 0.08)
}

fn scheme(s: Scheme) -> TypePolicy {
    TypePolicy {
        scheme: s,
        ..Default::default()
    }
}

fn opts(input: &Path, output: &Path, policy: TypePolicy) -> QuantizeOptions {
    QuantizeOptions {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        policy,
        quantizer: None,
        calibrate: Calibrate::Off,
        allow_requantize: false,
        overwrite: false,
        progress: false,
    }
}

fn run(o: &QuantizeOptions) -> Result<convert::ConvertReport, ConvertError> {
    convert::quantize_gguf(o, &convert::Silent, &AtomicBool::new(false))
}

/// Only `keep` remain in `dir` (no temporary or partial files).
fn assert_only(dir: &Path, keep: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want);
}

fn f16_model(tmp: &Path) -> PathBuf {
    let out = tmp.join("f16.gguf");
    common::convert(
        &hf(tmp),
        &out,
        scheme(Scheme::F16),
        airavata::quant::QuantMode::Reference,
    );
    out
}

#[test]
fn convert_and_quantize_share_one_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let f32_path = tmp.path().join("f32.gguf");
    common::convert(
        &hf(tmp.path()),
        &f32_path,
        scheme(Scheme::F32),
        airavata::quant::QuantMode::Reference,
    );
    let direct = tmp.path().join("direct.gguf");
    common::convert(
        &tmp.path().join("hf"),
        &direct,
        scheme(Scheme::Nf4),
        airavata::quant::QuantMode::Reference,
    );
    let via = tmp.path().join("via.gguf");
    let mut o = opts(&f32_path, &via, scheme(Scheme::Nf4));
    o.quantizer = Some(airavata::quant::QuantMode::Reference);
    run(&o).unwrap();
    let (a, b) = (
        GgufFile::open(&direct).unwrap(),
        GgufFile::open(&via).unwrap(),
    );
    assert_eq!(a.tensors.len(), b.tensors.len());
    for t in &a.tensors {
        let u = b.tensor(&t.name).unwrap();
        assert_eq!(t.ty, u.ty, "{}", t.name);
        assert!(a.tensor_data(t) == b.tensor_data(u), "{} differs", t.name);
    }
    assert_eq!(
        a.get("tokenizer.ggml.tokens"),
        b.get("tokenizer.ggml.tokens")
    );
    assert_eq!(b.get_u64("general.file_type"), Some(30));
}

#[test]
fn quantized_input_needs_allow_requantize() {
    let tmp = tempfile::tempdir().unwrap();
    let q8 = tmp.path().join("q8.gguf");
    common::convert(
        &hf(tmp.path()),
        &q8,
        scheme(Scheme::Q8_0),
        airavata::quant::QuantMode::Reference,
    );
    let out = tmp.path().join("out.gguf");
    let e = run(&opts(&q8, &out, scheme(Scheme::Nf4)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("token_embd.weight is Q8_0") && e.contains("--allow-requantize"),
        "{e}"
    );
    assert!(!out.exists());
    let mut o = opts(&q8, &out, scheme(Scheme::Nf4));
    o.allow_requantize = true;
    let r = run(&o).unwrap();
    assert!(
        r.types.contains_key("IQ4_NL") || r.types.contains_key("IQ4_XS"),
        "{:?}",
        r.types
    );
    // Dequantized first: the F16 of a Q8_0 tensor is its ggml dequantization.
    let mut o = opts(&q8, &tmp.path().join("f16.gguf"), scheme(Scheme::F16));
    o.allow_requantize = true;
    run(&o).unwrap();
    let (a, b) = (
        GgufFile::open(&q8).unwrap(),
        GgufFile::open(tmp.path().join("f16.gguf")).unwrap(),
    );
    let t = a.tensor("blk.0.ffn_up.weight").unwrap();
    let deq = airavata::quant::dequantize(t.ty, a.tensor_data(t), t.n_elements() as usize).unwrap();
    let u = b.tensor("blk.0.ffn_up.weight").unwrap();
    assert_eq!(u.ty, GgmlType::F16);
    for (c, v) in b.tensor_data(u).chunks_exact(2).zip(&deq) {
        assert_eq!(
            half::f16::from_le_bytes([c[0], c[1]]),
            half::f16::from_f32(*v)
        );
    }
}

#[test]
fn bad_input_is_an_error_naming_the_tensor_with_nothing_left_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let good = f16_model(tmp.path());
    let bytes = std::fs::read(&good).unwrap();
    let f = GgufFile::open(&good).unwrap();
    let last = f.tensors.last().unwrap().clone();
    let bad_dir = tmp.path().join("bad");
    std::fs::create_dir(&bad_dir).unwrap();

    // Truncated: the last tensor's data is cut short.
    let trunc = bad_dir.join("truncated.gguf");
    std::fs::write(&trunc, &bytes[..bytes.len() - 7]).unwrap();
    let out = bad_dir.join("out.gguf");
    let e = run(&opts(&trunc, &out, scheme(Scheme::Nf4)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&last.name) && e.contains("truncated.gguf"),
        "{e}"
    );
    assert_only(&bad_dir, &["truncated.gguf"]);

    // Lying offset / unknown type: patch the header's tensor table.
    let name = b"blk.0.attn_q.weight";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("tensor name in the header");
    // After the name: n_dims (u32), dims (u64 each), type (u32), offset (u64).
    let n_dims = u32::from_le_bytes(
        bytes[at + name.len()..at + name.len() + 4]
            .try_into()
            .unwrap(),
    ) as usize;
    let ty_at = at + name.len() + 4 + 8 * n_dims;
    let off_at = ty_at + 4;

    let mut lying = bytes.clone();
    lying[off_at..off_at + 8].copy_from_slice(&(bytes.len() as u64 * 4).to_le_bytes());
    let p = bad_dir.join("lying.gguf");
    std::fs::write(&p, &lying).unwrap();
    let e = run(&opts(&p, &out, scheme(Scheme::Nf4)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("blk.0.attn_q.weight"), "{e}");

    let mut unknown = bytes.clone();
    unknown[ty_at..ty_at + 4].copy_from_slice(&99u32.to_le_bytes());
    let p = bad_dir.join("unknown.gguf");
    std::fs::write(&p, &unknown).unwrap();
    let e = run(&opts(&p, &out, scheme(Scheme::Nf4)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("blk.0.attn_q.weight") && e.contains("99"), "{e}");
    assert_only(&bad_dir, &["truncated.gguf", "lying.gguf", "unknown.gguf"]);

    // A NaN in the data: named with its element, no output.
    let mut nan = bytes.clone();
    let t = f.tensor("blk.1.ffn_down.weight").unwrap();
    let start = (f.data_offset + t.offset) as usize + 2 * 5;
    nan[start..start + 2].copy_from_slice(&half::f16::NAN.to_le_bytes());
    let p = bad_dir.join("nan.gguf");
    std::fs::write(&p, &nan).unwrap();
    let e = run(&opts(&p, &out, scheme(Scheme::Nf4)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blk.1.ffn_down.weight") && e.contains("element 5"),
        "{e}"
    );
    assert_only(
        &bad_dir,
        &["truncated.gguf", "lying.gguf", "unknown.gguf", "nan.gguf"],
    );
    // Existing output is kept unless --force.
    let e = run(&opts(&good, &good, scheme(Scheme::Nf4)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists"), "{e}");
}

#[test]
fn bnb_nf4_scheme_is_the_exact_bitsandbytes_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = hf(tmp.path());
    let out = tmp.path().join("bnb.gguf");
    common::convert(
        &dir,
        &out,
        scheme(Scheme::BnbNf4),
        airavata::quant::QuantMode::Reference,
    );
    let f = GgufFile::open(&out).unwrap();
    let ck = Checkpoint::open(&dir).unwrap();
    // A linear weight: bf16 storage of the NF4 round trip of the bf16 weight.
    let (file, entry) = ck.get("model.layers.0.mlp.down_proj.weight").unwrap();
    let m = file.map(entry).unwrap();
    let mut x = vec![0f32; entry.shape.iter().product()];
    airavata::safetensors::to_f32(entry.dtype, m.bytes(), &mut x).unwrap();
    let want = bnb::nf4_round_trip(&x, &entry.shape, WeightDtype::Bf16).unwrap();
    let t = f.tensor("blk.0.ffn_down.weight").unwrap();
    assert_eq!(t.ty, GgmlType::Bf16);
    let got: Vec<f32> = f
        .tensor_data(t)
        .chunks_exact(2)
        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    assert_eq!(got, want);
    // NF4: each block of 64 holds at most 16 distinct values, one of them 0.
    for b in got.chunks(64) {
        let mut v: Vec<u32> = b.iter().map(|x| x.to_bits()).collect();
        v.sort();
        v.dedup();
        assert!(v.len() <= 16, "{} distinct values in a block", v.len());
    }
    assert_ne!(got, x, "weights were rounded");
    // Embeddings and output stay 16-bit, unchanged; norms F32.
    let e = f.tensor("token_embd.weight").unwrap();
    assert_eq!(e.ty, GgmlType::Bf16);
    let (file, entry) = ck.get("model.embed_tokens.weight").unwrap();
    assert!(f.tensor_data(e) == file.map(entry).unwrap().bytes());
    assert_eq!(
        f.tensor("blk.0.attn_norm.weight").unwrap().ty,
        GgmlType::F32
    );
}
