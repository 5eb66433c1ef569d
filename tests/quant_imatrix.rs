//! `Imatrix::load` on files written here in both llama-imatrix formats.

use airavata::quant::Imatrix;
use std::io::Write;

fn entries() -> Vec<(String, Vec<f32>, i32)> {
    // (name, sums, ncall)
    (0..3)
        .map(|b| {
            let sums: Vec<f32> = (0..64).map(|i| (i * (b + 1)) as f32 * 0.5 + 1.0).collect();
            (format!("blk.{b}.attn_q.weight"), sums, 10 + b)
        })
        .collect()
}

fn put_i32(v: &mut Vec<u8>, x: i32) {
    v.extend_from_slice(&x.to_le_bytes());
}

#[test]
fn loads_legacy_dat() {
    let es = entries();
    let mut buf = Vec::new();
    put_i32(&mut buf, es.len() as i32);
    for (name, sums, ncall) in &es {
        put_i32(&mut buf, name.len() as i32);
        buf.extend_from_slice(name.as_bytes());
        put_i32(&mut buf, *ncall);
        put_i32(&mut buf, sums.len() as i32);
        for s in sums {
            buf.extend_from_slice(&s.to_le_bytes());
        }
    }
    put_i32(&mut buf, 42);
    put_i32(&mut buf, 9);
    buf.extend_from_slice(b"wiki.test");
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(&buf).expect("write");
    let m = Imatrix::load(f.path()).expect("load .dat");
    assert_eq!(m.len(), 3);
    assert_eq!(m.chunk_count, Some(42));
    assert_eq!(m.datasets, vec!["wiki.test".to_string()]);
    for (name, sums, ncall) in &es {
        let v = m.get(name).expect("entry present");
        let want: Vec<f32> = sums.iter().map(|s| s / *ncall as f32).collect();
        assert_eq!(v, want.as_slice());
    }
    assert!(m.get("blk.9.attn_q.weight").is_none());

    // Truncated files are errors, not panics.
    let mut g = tempfile::NamedTempFile::new().expect("temp file");
    g.write_all(&buf[..buf.len() / 2]).expect("write");
    assert!(Imatrix::load(g.path()).is_err());
}

fn gguf_str(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(&(s.len() as u64).to_le_bytes());
    v.extend_from_slice(s.as_bytes());
}

#[test]
fn loads_gguf() {
    let es = entries();
    // Tensors: <name>.in_sum2 [64, 1] and <name>.counts [1, 1]; the last entry
    // has a zero count (its values become 1, as llama-quantize does).
    let mut tensors: Vec<(String, Vec<u64>, Vec<f32>)> = Vec::new();
    for (k, (name, sums, ncall)) in es.iter().enumerate() {
        let count = if k == 2 { 0.0 } else { *ncall as f32 };
        tensors.push((
            format!("{name}.in_sum2"),
            vec![sums.len() as u64, 1],
            sums.clone(),
        ));
        tensors.push((format!("{name}.counts"), vec![1, 1], vec![count]));
    }
    let mut buf = Vec::new();
    buf.extend_from_slice(b"GGUF");
    buf.extend_from_slice(&3u32.to_le_bytes());
    buf.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    buf.extend_from_slice(&3u64.to_le_bytes());
    gguf_str(&mut buf, "general.type");
    buf.extend_from_slice(&8u32.to_le_bytes());
    gguf_str(&mut buf, "imatrix");
    gguf_str(&mut buf, "imatrix.datasets");
    buf.extend_from_slice(&9u32.to_le_bytes());
    buf.extend_from_slice(&8u32.to_le_bytes());
    buf.extend_from_slice(&1u64.to_le_bytes());
    gguf_str(&mut buf, "calib.txt");
    gguf_str(&mut buf, "imatrix.chunk_count");
    buf.extend_from_slice(&4u32.to_le_bytes());
    buf.extend_from_slice(&7u32.to_le_bytes());
    let mut off = 0u64;
    let mut offsets = Vec::new();
    for (name, dims, data) in &tensors {
        gguf_str(&mut buf, name);
        buf.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            buf.extend_from_slice(&d.to_le_bytes());
        }
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&off.to_le_bytes());
        offsets.push(off);
        off += (data.len() as u64 * 4).div_ceil(32) * 32;
    }
    while !buf.len().is_multiple_of(32) {
        buf.push(0);
    }
    let start = buf.len();
    for ((_, _, data), o) in tensors.iter().zip(&offsets) {
        buf.resize(start + *o as usize, 0);
        for x in data {
            buf.extend_from_slice(&x.to_le_bytes());
        }
    }
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(&buf).expect("write");
    let m = Imatrix::load(f.path()).expect("load gguf");
    assert_eq!(m.len(), 3);
    assert_eq!(m.chunk_count, Some(7));
    assert_eq!(m.datasets, vec!["calib.txt".to_string()]);
    for (k, (name, sums, ncall)) in es.iter().enumerate() {
        let v = m.get(name).expect("entry present");
        let want: Vec<f32> = if k == 2 {
            vec![1.0; sums.len()]
        } else {
            sums.iter().map(|s| s / *ncall as f32).collect()
        };
        assert_eq!(v, want.as_slice(), "{name}");
    }
}
