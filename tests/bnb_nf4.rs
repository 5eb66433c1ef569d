//! bitsandbytes NF4 checkpoints: layout detection, quantize -> dequantize
//! round trips within NF4's error bounds, and bit-exact agreement with an
//! independent reimplementation of bitsandbytes' dequantization.

use airavata::bnb::{self, Nf4QuantizeOptions, OwnedTensor, RawTensor, TensorData, WeightDtype};
use airavata::safetensors::{self, SafetensorsFile, TensorHeader};
use std::collections::HashMap;

/// Small deterministic PRNG (xorshift64*) with Box-Muller normals.
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

fn normal_weights(n: usize, std: f32, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed);
    (0..n).map(|_| r.normal() * std).collect()
}

fn by_name(ts: &[OwnedTensor]) -> HashMap<&str, &OwnedTensor> {
    ts.iter().map(|t| (t.name.as_str(), t)).collect()
}

fn lookup<'a>(
    m: &'a HashMap<&str, &OwnedTensor>,
) -> impl FnMut(&str) -> Option<TensorData<&'a [u8]>> + 'a {
    move |name| {
        m.get(name).map(|t| TensorData {
            dtype: t.dtype.to_string(),
            shape: t.shape.clone(),
            data: t.data.as_slice(),
        })
    }
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Independent dequantization written straight from bitsandbytes' Python/CUDA
/// code paths, sharing nothing with `airavata::bnb` but the input bytes.
fn reference_dequant(m: &HashMap<&str, &OwnedTensor>, w: &str) -> (Vec<usize>, Vec<f32>) {
    let qs: serde_json::Value =
        serde_json::from_slice(&m[format!("{w}.quant_state.bitsandbytes__nf4").as_str()].data)
            .unwrap();
    let shape: Vec<usize> = qs["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let n: usize = shape.iter().product();
    let blocksize = qs["blocksize"].as_u64().unwrap() as usize;
    let quant_map = f32s(&m[format!("{w}.quant_map").as_str()].data);
    let absmax_t = m[format!("{w}.absmax").as_str()];
    let absmax: Vec<f32> = if absmax_t.dtype == "U8" {
        let code = f32s(&m[format!("{w}.nested_quant_map").as_str()].data);
        let nabs = f32s(&m[format!("{w}.nested_absmax").as_str()].data);
        let nbs = qs["nested_blocksize"].as_u64().unwrap() as usize;
        let off = qs["nested_offset"].as_f64().unwrap() as f32;
        absmax_t
            .data
            .iter()
            .enumerate()
            .map(|(j, &q)| {
                let deq: f32 = code[q as usize] * nabs[j / nbs];
                deq + off
            })
            .collect()
    } else {
        f32s(&absmax_t.data)
    };
    let packed = &m[w].data;
    let mut out = Vec::with_capacity(n);
    for e in 0..n {
        let byte = packed[e / 2];
        let q = if e % 2 == 0 { byte >> 4 } else { byte & 15 };
        let v: f32 = quant_map[q as usize] * absmax[e / blocksize];
        let v = match qs["dtype"].as_str().unwrap() {
            "bfloat16" => half::bf16::from_f32(v).to_f32(),
            "float16" => half::f16::from_f32(v).to_f32(),
            _ => v,
        };
        out.push(v);
    }
    (shape, out)
}

#[test]
fn bnb_detects_checkpoint_and_lists_companions() {
    let w = "model.layers.0.self_attn.q_proj.weight";
    let ts = bnb::quantize_nf4(
        w,
        &normal_weights(64 * 64, 0.02, 1),
        &[64, 64],
        Default::default(),
    )
    .unwrap();
    let mut names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
    names.push("model.norm.weight");
    names.push("lm_head.weight");
    assert!(bnb::detect(&names));
    assert!(!bnb::detect(&["model.norm.weight", "lm_head.weight"]));
    assert_eq!(bnb::quantized_weights(&names), vec![w.to_string()]);
    let mut hidden = bnb::companion_tensors(&names);
    hidden.sort();
    let mut want: Vec<String> = [
        ".absmax",
        ".nested_absmax",
        ".nested_quant_map",
        ".quant_map",
        ".quant_state.bitsandbytes__nf4",
    ]
    .iter()
    .map(|s| format!("{w}{s}"))
    .collect();
    want.sort();
    assert_eq!(hidden, want);
    assert!(bnb::is_companion(&format!("{w}.absmax")));
    assert!(!bnb::is_companion(w));
    // Exactly the expected tensor set and shapes were written.
    let m = by_name(&ts);
    assert_eq!(m[w].shape, vec![64 * 64 / 2, 1]);
    assert_eq!(m[w].dtype, "U8");
    assert_eq!(m[format!("{w}.absmax").as_str()].shape, vec![64]);
    assert_eq!(m[format!("{w}.absmax").as_str()].dtype, "U8");
    assert_eq!(m[format!("{w}.nested_absmax").as_str()].shape, vec![1]);
    assert_eq!(m[format!("{w}.nested_quant_map").as_str()].shape, vec![256]);
    assert_eq!(m[format!("{w}.quant_map").as_str()].shape, vec![16]);
}

#[test]
fn bnb_quant_state_json_is_python_style_and_parses() {
    let w = "x.weight";
    let ts = bnb::quantize_nf4(
        w,
        &normal_weights(512, 1.0, 2),
        &[8, 64],
        Default::default(),
    )
    .unwrap();
    let m = by_name(&ts);
    let s = std::str::from_utf8(&m["x.weight.quant_state.bitsandbytes__nf4"].data).unwrap();
    assert!(
        s.starts_with(r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [8, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": "#),
        "{s}"
    );
    // A blob as Python's json.dumps writes it (exponent float) parses too.
    let py = br#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [4096, 11008], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 3.1e-05}"#;
    let qs = bnb::QuantState::from_bytes(py).unwrap();
    assert_eq!(qs.dtype, WeightDtype::F16);
    assert_eq!(qs.n, 4096 * 11008);
    assert_eq!(qs.n_blocks, 4096 * 11008 / 64);
    assert!(qs.nested());
    assert_eq!(qs.json.nested_offset, Some(3.1e-5));
}

#[test]
fn bnb_nibble_order_is_high_first() {
    // Hand-built non-nested weight: 4 elements, blocksize 64, absmax 2.0.
    // byte 0 = 0xF0: element 0 = code 15 (+1.0), element 1 = code 0 (-1.0);
    // byte 1 = 0x87: element 2 = code 8 (0.0796), element 3 = code 7 (0.0).
    let packed = [0xF0u8, 0x87];
    let absmax = 2.0f32.to_le_bytes();
    let qmap: Vec<u8> = bnb::NF4_CODE.iter().flat_map(|v| v.to_le_bytes()).collect();
    let qs = br#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [2, 2]}"#;
    let parts = bnb::Nf4Parts {
        weight: RawTensor {
            dtype: "U8",
            shape: &[2, 1],
            data: &packed,
        },
        absmax: RawTensor {
            dtype: "F32",
            shape: &[1],
            data: &absmax,
        },
        quant_map: RawTensor {
            dtype: "F32",
            shape: &[16],
            data: &qmap,
        },
        nested_absmax: None,
        nested_quant_map: None,
        quant_state: RawTensor {
            dtype: "U8",
            shape: &[qs.len()],
            data: qs,
        },
    };
    let d = bnb::dequantize(&parts).unwrap();
    assert_eq!(d.shape, vec![2, 2]);
    assert_eq!(d.data, vec![2.0, -2.0, 2.0 * bnb::NF4_CODE[8], 0.0]);
}

#[test]
fn bnb_roundtrip_error_within_nf4_bounds() {
    // 256 x 192 = 49152 values = 768 blocks of 64 -> 3 nested blocks of 256.
    let (rows, cols) = (256usize, 192usize);
    let w = "model.layers.3.mlp.down_proj.weight";
    for (seed, dtype) in [
        (11u64, WeightDtype::Bf16),
        (12, WeightDtype::F16),
        (13, WeightDtype::F32),
    ] {
        let mut x = normal_weights(rows * cols, 0.02, seed);
        // A few outliers, as real weights have.
        x[5] = 0.31;
        x[40_000] = -0.27;
        let opts = Nf4QuantizeOptions {
            dtype,
            ..Default::default()
        };
        let ts = bnb::quantize_nf4(w, &x, &[rows, cols], opts).unwrap();
        let m = by_name(&ts);
        let d = bnb::dequantize_with(w, lookup(&m)).unwrap();
        assert_eq!(d.shape, vec![rows, cols]);
        assert_eq!(d.dtype, dtype);

        // Per element: |w - w'| <= absmax_b * (largest NF4 half-gap) + |absmax_b - absmax'_b|
        // plus one rounding step of the output dtype.
        let half_gap = bnb::NF4_CODE
            .windows(2)
            .map(|p| (p[1] - p[0]) / 2.0)
            .fold(0f32, f32::max);
        let xr: Vec<f32> = x.iter().map(|&v| dtype.round(v)).collect();
        let mut se = 0f64;
        let mut ss = 0f64;
        for (b, (orig, deq)) in xr.chunks(64).zip(d.data.chunks(64)).enumerate() {
            let amax = orig.iter().fold(0f32, |a, v| a.max(v.abs()));
            let amax_deq = deq.iter().fold(0f32, |a, v| a.max(v.abs()));
            // Double quantization of absmax: the 8-bit dynamic map has < 1% relative
            // step near the top of each nested block's range.
            assert!(
                (amax - amax_deq).abs() <= 0.02 * amax + 1e-4,
                "block {b}: absmax {amax} vs {amax_deq}"
            );
            for (o, q) in orig.iter().zip(deq) {
                let bound = amax * half_gap + (amax - amax_deq).abs() + q.abs() * 1e-2 + 1e-7;
                assert!(
                    (o - q).abs() <= bound,
                    "block {b}: {o} -> {q} (bound {bound})"
                );
                se += ((o - q) as f64).powi(2);
                ss += (*o as f64).powi(2);
            }
        }
        let rel_rms = (se / ss).sqrt();
        // NF4 on Gaussian data with 64-blocks: ~ 0.09-0.11 relative RMS error.
        assert!(
            rel_rms > 0.05 && rel_rms < 0.13,
            "{dtype:?}: relative RMS error {rel_rms}"
        );
        eprintln!("{dtype:?}: relative RMS error {rel_rms:.4}");
    }
}

#[test]
fn bnb_dequant_bit_exact_vs_independent_reference() {
    let w = "model.layers.1.self_attn.o_proj.weight";
    // Odd element count (15 x 67 = 1005) exercises the last half byte and a
    // partial last block.
    for (shape, nested, dtype) in [
        (vec![64usize, 320usize], Some(256), WeightDtype::Bf16),
        (vec![15, 67], Some(256), WeightDtype::Bf16),
        (vec![128, 96], None, WeightDtype::F16),
        (vec![40, 64], Some(256), WeightDtype::F32),
    ] {
        let n: usize = shape.iter().product();
        let x = normal_weights(n, 0.05, n as u64);
        let opts = Nf4QuantizeOptions {
            dtype,
            blocksize: 64,
            nested_blocksize: nested,
        };
        let ts = bnb::quantize_nf4(w, &x, &shape, opts).unwrap();
        let m = by_name(&ts);
        let d = bnb::dequantize_with(w, lookup(&m)).unwrap();
        let (rshape, r) = reference_dequant(&m, w);
        assert_eq!(d.shape, rshape);
        assert_eq!(d.data.len(), n);
        let mismatches = d
            .data
            .iter()
            .zip(&r)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(mismatches, 0, "shape {shape:?} nested {nested:?}");
    }
}

#[test]
fn bnb_reports_bad_or_missing_parts() {
    let w = "a.weight";
    let ts = bnb::quantize_nf4(
        w,
        &normal_weights(4096, 0.02, 5),
        &[64, 64],
        Default::default(),
    )
    .unwrap();
    let m = by_name(&ts);

    // Missing nested map.
    let mut get = lookup(&m);
    let err = bnb::dequantize_with(w, |n: &str| {
        if n.ends_with("nested_quant_map") {
            None
        } else {
            get(n)
        }
    })
    .unwrap_err();
    assert!(err.to_string().contains("nested_quant_map"), "{err}");

    // Missing packed weight.
    let mut get = lookup(&m);
    let err = bnb::dequantize_with(w, |n: &str| if n == w { None } else { get(n) }).unwrap_err();
    assert!(matches!(err, bnb::BnbError::Missing(_)), "{err}");

    // Truncated packed weight.
    let short = &m[w].data[..100];
    let mut get = lookup(&m);
    let err = bnb::dequantize_with(w, |n: &str| {
        if n == w {
            Some(TensorData {
                dtype: "U8".into(),
                shape: vec![100, 1],
                data: short,
            })
        } else {
            get(n)
        }
    })
    .unwrap_err();
    assert!(
        err.to_string().contains(w) && err.to_string().contains("weight"),
        "{err}"
    );

    // FP4 quant state is refused, not misread.
    let fp4 = br#"{"quant_type": "fp4", "blocksize": 64, "dtype": "bfloat16", "shape": [64, 64]}"#;
    assert!(matches!(
        bnb::QuantState::from_bytes(fp4),
        Err(bnb::BnbError::Unsupported(_))
    ));
    // Garbage JSON.
    assert!(matches!(
        bnb::QuantState::from_bytes(b"{not json"),
        Err(bnb::BnbError::QuantState(_))
    ));
}

/// The wiring a converter needs: write a checkpoint with bitsandbytes
/// tensors next to ordinary ones through `airavata::safetensors`, read it
/// back, detect, hide the companions, dequantize through the reader.
#[test]
fn bnb_checkpoint_through_safetensors_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let q = "model.layers.0.mlp.gate_proj.weight";
    let x = normal_weights(128 * 256, 0.03, 21);
    let mut tensors = bnb::quantize_nf4(q, &x, &[128, 256], Default::default()).unwrap();
    let norm: Vec<u8> = (0..256)
        .flat_map(|_| half::bf16::from_f32(1.0).to_bits().to_le_bytes())
        .collect();
    tensors.push(OwnedTensor {
        name: "model.layers.0.post_attention_layernorm.weight".into(),
        dtype: "BF16",
        shape: vec![256],
        data: norm,
    });
    let dtype = |s: &str| match s {
        "U8" => safetensors::Dtype::U8,
        "F32" => safetensors::Dtype::F32,
        _ => safetensors::Dtype::BF16,
    };
    let headers: Vec<TensorHeader> = tensors
        .iter()
        .map(|t| TensorHeader {
            name: t.name.clone(),
            dtype: dtype(t.dtype),
            shape: t.shape.clone(),
        })
        .collect();
    safetensors::write_file(&path, &headers, &[("format", "pt")], |i| {
        tensors[i].data.clone()
    })
    .unwrap();

    let f = SafetensorsFile::open(&path).unwrap();
    let names: Vec<&str> = f.tensors.keys().map(String::as_str).collect();
    assert!(bnb::detect(&names));
    let hidden = bnb::companion_tensors(&names);
    assert_eq!(hidden.len(), 5);
    let visible: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !hidden.iter().any(|h| h == n))
        .collect();
    assert_eq!(visible.len(), 2, "{visible:?}");
    for w in bnb::quantized_weights(&names) {
        let d = bnb::dequantize_with(&w, |name| {
            let e = f.entry(name)?;
            let m = f.map(e).ok()?;
            Some(TensorData {
                dtype: e.dtype.name().to_string(),
                shape: e.shape.clone(),
                data: m.bytes().to_vec(),
            })
        })
        .unwrap();
        assert_eq!(d.shape, vec![128, 256]);
        let m = by_name(&tensors);
        let direct = bnb::dequantize_with(&w, lookup(&m)).unwrap();
        assert_eq!(d, direct);
    }
}
