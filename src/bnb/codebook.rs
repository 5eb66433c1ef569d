//! The two lookup tables bitsandbytes uses for 4-bit NF4 weights with double
//! quantization: the 16-entry NF4 codebook and the 256-entry signed "dynamic"
//! 8-bit map that the per-block absmax values are quantized with.

/// NF4 code values, indexed by the 4-bit code (bitsandbytes
/// `get_4bit_type("nf4")` and the CUDA `nf4_dequantization_lut`, which the
/// dequantization kernel uses regardless of the stored `quant_map`).
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// The same codebook as written in bitsandbytes' Python source, in double
/// precision; the quantizer's decision thresholds are midpoints of these.
const NF4_CODE_F64: [f64; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// Decision thresholds of bitsandbytes' `dQuantizeNF4`: code `k` is chosen
/// when `x` is above `thresholds[k-1]` and not above `thresholds[k]`. They are
/// the f64 midpoints of adjacent codes rounded to f32, which is what the CUDA
/// source's float literals are.
pub fn nf4_thresholds() -> [f32; 15] {
    let mut t = [0f32; 15];
    for (k, slot) in t.iter_mut().enumerate() {
        *slot = ((NF4_CODE_F64[k] + NF4_CODE_F64[k + 1]) / 2.0) as f32;
    }
    t
}

/// Nearest NF4 code of a value already scaled into [-1, 1], with the same
/// strict `>` comparisons as bitsandbytes: a value exactly on a threshold goes
/// to the lower code, and NaN (an all-zero block: 0 * 1/0) becomes code 0.
pub fn nf4_encode(x: f32, thresholds: &[f32; 15]) -> u8 {
    thresholds.iter().filter(|&&t| x > t).count() as u8
}

/// `torch.linspace(start, end, steps)` in float32 (the two-sided formula
/// PyTorch uses: the first half counts up from `start`, the rest down from `end`).
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (steps - 1 - i) as f32
            }
        })
        .collect()
}

/// bitsandbytes `create_dynamic_map(signed=True, max_exponent_bits=7,
/// total_bits=8)`: for each exponent `e` in 0..7, the midpoints of
/// `linspace(0.1, 1, 2^e + 1)` scaled by `10^(e-6)`, both signs, plus 0 and 1,
/// sorted ascending (256 values). Computed in f32 as torch does; exact
/// agreement with torch's last bit is not needed because the map is stored
/// in the checkpoint (`nested_quant_map`) and read back from there.
pub fn dynamic_map_signed() -> [f32; 256] {
    const MAX_EXP_BITS: i32 = 7;
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..MAX_EXP_BITS {
        let items = (1usize << i) + 1;
        let b = linspace_f32(0.1, 1.0, items);
        let scale = 10f64.powi(-(MAX_EXP_BITS - 1) + i) as f32;
        for w in b.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            data.push(-(scale * mean));
        }
    }
    data.push(0.0);
    data.push(1.0);
    debug_assert_eq!(data.len(), 256);
    data.sort_by(f32::total_cmp);
    let mut out = [0f32; 256];
    out.copy_from_slice(&data);
    out
}

/// Nearest entry of a sorted 256-value map (bitsandbytes `dQuantize<0>`:
/// round to the closer neighbour; exact midpoints go to the lower entry).
pub fn nearest_in_sorted(map: &[f32; 256], x: f32) -> u8 {
    let hi = map.partition_point(|&v| v < x);
    if hi == 0 {
        return 0;
    }
    if hi == map.len() {
        return 255;
    }
    let lo = hi - 1;
    let mid = (map[lo] + map[hi]) * 0.5;
    if x > mid {
        hi as u8
    } else {
        lo as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nf4_table_matches_f64_source() {
        for (a, b) in NF4_CODE.iter().zip(NF4_CODE_F64) {
            assert_eq!(*a, b as f32);
        }
    }

    #[test]
    fn thresholds_match_cuda_literals() {
        // The literals of bitsandbytes' dQuantizeNF4 decision tree (as f32).
        let cuda: [f64; 15] = [
            -0.8480964004993439,
            -0.6106329262256622,
            -0.4599952697753906,
            -0.33967943489551544,
            -0.23460740596055984,
            -0.13791173323988914,
            -0.045525018125772476,
            0.03979014977812767,
            0.1202552504837513,
            0.2035212516784668,
            0.2920137718319893,
            0.3893125355243683,
            0.5016634166240692,
            0.6427869200706482,
            0.8614784181118011,
        ];
        let t = nf4_thresholds();
        for (a, b) in t.iter().zip(cuda) {
            assert_eq!(*a, b as f32);
        }
    }

    #[test]
    fn encode_picks_nearest_code() {
        let t = nf4_thresholds();
        for (k, &c) in NF4_CODE.iter().enumerate() {
            assert_eq!(nf4_encode(c, &t) as usize, k);
        }
        assert_eq!(nf4_encode(f32::NAN, &t), 0);
    }

    #[test]
    fn dynamic_map_shape() {
        let m = dynamic_map_signed();
        assert_eq!(m[255], 1.0);
        assert!(m.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        assert!(m.contains(&0.0));
        // smallest magnitude: 1e-6 * 0.55
        let smallest = m
            .iter()
            .filter(|v| **v > 0.0)
            .fold(f32::MAX, |a, &b| a.min(b));
        assert!((smallest - 0.55e-6).abs() < 1e-9);
        assert!((m[0] + 0.992_968_75).abs() < 1e-6);
    }
}
