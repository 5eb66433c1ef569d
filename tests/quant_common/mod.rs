//! Shared helpers for the quantization tests and benches: a seeded RNG, row
//! families, the ggml FFI oracle and a minimal GGUF tensor reader.
#![allow(dead_code)]

#[path = "../common/assets.rs"]
mod assets;

use airavata::gguf::GgmlType;
use std::ffi::c_void;
use std::path::Path;

/// splitmix64-seeded xoshiro256** generator (no extra dependencies).
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let r = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Log-uniform in [lo, hi).
    pub fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + (hi.ln() - lo.ln()) * self.uniform()).exp()
    }
}

/// The seed for this run: `AIRAVATA_QUANT_SEED` if set, else the clock.
pub fn run_seed() -> u64 {
    let seed = match std::env::var("AIRAVATA_QUANT_SEED") {
        Ok(s) => s.trim().parse().expect("AIRAVATA_QUANT_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed),
    };
    eprintln!("quant seed: {seed} (replay with AIRAVATA_QUANT_SEED={seed})");
    seed
}

/// Row families used by the tests and the RMSE bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Gaussian,
    HeavyTailed,
    Zero,
    Constant,
    Outlier,
    Tiny,
    BlockScaled,
}

pub const FAMILIES: [Family; 7] = [
    Family::Gaussian,
    Family::HeavyTailed,
    Family::Zero,
    Family::Constant,
    Family::Outlier,
    Family::Tiny,
    Family::BlockScaled,
];

impl Family {
    pub fn row(self, rng: &mut Rng, n: usize) -> Vec<f32> {
        let sigma = rng.log_uniform(1e-3, 1.0);
        match self {
            Family::Gaussian => (0..n).map(|_| (rng.normal() * sigma) as f32).collect(),
            Family::HeavyTailed => {
                if rng.below(2) == 0 {
                    // Student-t with 3 degrees of freedom.
                    (0..n)
                        .map(|_| {
                            let chi2: f64 = (0..3).map(|_| rng.normal().powi(2)).sum();
                            (sigma * rng.normal() / (chi2 / 3.0).sqrt()) as f32
                        })
                        .collect()
                } else {
                    // Cauchy, clipped at 100 sigma.
                    (0..n)
                        .map(|_| {
                            let c = (std::f64::consts::PI * (rng.uniform() - 0.5)).tan();
                            (sigma * c.clamp(-100.0, 100.0)) as f32
                        })
                        .collect()
                }
            }
            Family::Zero => vec![0.0; n],
            Family::Constant => {
                let c = (rng.normal() * sigma) as f32;
                vec![c; n]
            }
            Family::Outlier => {
                let mut v: Vec<f32> = (0..n).map(|_| (rng.normal() * sigma) as f32).collect();
                let i = rng.below(n);
                let sign = if rng.below(2) == 0 { 1.0 } else { -1.0 };
                v[i] = (sign * sigma * rng.log_uniform(100.0, 10_000.0)) as f32;
                v
            }
            Family::Tiny => {
                let s = rng.log_uniform(1e-9, 1e-7);
                (0..n).map(|_| (rng.normal() * s) as f32).collect()
            }
            Family::BlockScaled => {
                let mut v = Vec::with_capacity(n);
                while v.len() < n {
                    let s = sigma * rng.log_uniform(0.05, 1.0);
                    for _ in 0..32.min(n - v.len()) {
                        v.push((rng.normal() * s) as f32);
                    }
                }
                v
            }
        }
    }
}

/// An importance vector like llama-imatrix's (mean squared activations),
/// with a few zero columns.
pub fn random_imatrix(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            if rng.below(20) == 0 {
                0.0
            } else {
                rng.log_uniform(1e-3, 10.0) as f32
            }
        })
        .collect()
}

/// `ggml_quantize_chunk(ty, src, ..)` over all rows.
pub fn ggml_quantize(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
) -> Vec<u8> {
    let nrows = src.len() / n_per_row;
    assert_eq!(nrows * n_per_row, src.len());
    if let Some(im) = imatrix {
        assert_eq!(im.len(), n_per_row);
    }
    let row_bytes = ty
        .row_bytes(n_per_row)
        .expect("row length fits the block size");
    let mut out = vec![0u8; row_bytes * nrows];
    let im = imatrix.map_or(std::ptr::null(), |m| m.as_ptr());
    // SAFETY: `src` holds `nrows * n_per_row` floats, `out` has exactly
    // `ggml_row_size(ty, n_per_row) * nrows` bytes, `im` is null or has
    // `n_per_row` floats, and all outlive the call. ggml only reads `src`/`im`
    // and writes within `out`.
    let written = unsafe {
        llama_cpp_sys_2::ggml_quantize_chunk(
            ty.code(),
            src.as_ptr(),
            out.as_mut_ptr() as *mut c_void,
            0,
            nrows as i64,
            n_per_row as i64,
            im,
        )
    };
    assert_eq!(written, out.len());
    out
}

/// ggml's `to_float` for `ty` over `n` values.
pub fn ggml_dequantize(ty: GgmlType, data: &[u8], n: usize) -> Vec<f32> {
    assert_eq!(Some(data.len()), ty.row_bytes(n));
    // SAFETY: ggml_get_type_traits returns a pointer into ggml's static traits
    // table for any valid type code (ours are valid ggml types).
    let to_float = unsafe { (*llama_cpp_sys_2::ggml_get_type_traits(ty.code())).to_float }
        .expect("type has to_float");
    let mut out = vec![0f32; n];
    // SAFETY: `data` holds exactly the bytes of `n` values of `ty`, `out`
    // has room for `n` floats; the function reads/writes only those.
    unsafe { to_float(data.as_ptr() as *const c_void, out.as_mut_ptr(), n as i64) };
    out
}

/// Weighted squared error, the metric the search quantizers minimize:
/// weights `x^2`, or `qw * sqrt(sigma2 + x^2)` with an imatrix
/// (`sigma2 = 2 * mean(x^2)` over the row).
pub fn weighted_sq_err(x: &[f32], y: &[f32], imatrix: Option<&[f32]>) -> (f64, f64) {
    let sigma2 = 2.0 * x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64;
    let mut err = 0.0;
    let mut wsum = 0.0;
    for i in 0..x.len() {
        let xi = x[i] as f64;
        let w = match imatrix {
            Some(q) => q[i] as f64 * (sigma2 + xi * xi).sqrt(),
            None => xi * xi,
        };
        err += w * (xi - y[i] as f64).powi(2);
        wsum += w;
    }
    (err, wsum)
}

/// An F32 tensor of a GGUF file.
pub struct GgufTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub data: Vec<f32>,
}

/// Every F32 tensor of a GGUF file (read with `airavata::gguf::GgufFile`).
pub fn read_gguf_f32_tensors(path: &Path) -> Result<Vec<GgufTensor>, airavata::gguf::GgufError> {
    let f = airavata::gguf::GgufFile::open(path)?;
    Ok(f.tensors
        .iter()
        .filter(|t| t.ty == GgmlType::F32)
        .map(|t| GgufTensor {
            name: t.name.clone(),
            dims: t.dims.clone(),
            data: f
                .tensor_data(t)
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        })
        .collect())
}

/// The stories260K GGUF under `$AIRAVATA_ASSETS` (see `common/assets.rs`
/// for when a missing file is a skip and when a failure).
pub fn stories_gguf(test: &str) -> Option<std::path::PathBuf> {
    assets::asset(test, "stories260k-gguf/stories260K.gguf")
}

pub const QUANT_TYPES: [GgmlType; 6] = [
    GgmlType::Iq4Xs,
    GgmlType::Iq4Nl,
    GgmlType::Q6K,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4K,
];
