//! Our GGUF reader against ggml's own (`gguf_*` through llama-cpp-sys-2),
//! plus property tests: no panics on damaged files, writer/reader round trip.

mod common;

use airavata::gguf::{self, GgmlType, GgufFile, GgufValue, TensorSpec};
use llama_cpp_sys_2 as sys;
use proptest::prelude::*;
use std::ffi::{CStr, CString};
use std::path::Path;

/// What ggml sees in a GGUF image: (version, alignment, data offset, keys, tensors).
#[derive(Debug, PartialEq)]
struct GgmlView {
    version: u32,
    alignment: u64,
    data_offset: u64,
    keys: Vec<(String, u32)>,
    tensors: Vec<(String, u32, u64, u64, Vec<u64>)>,
}

fn ggml_view_ctx(ctx: *mut sys::gguf_context) -> Option<GgmlView> {
    if ctx.is_null() {
        return None;
    }
    // SAFETY: ctx is a live gguf_context returned by ggml; every index passed
    // is below the counts ggml reports; returned C strings live as long as ctx.
    let view = unsafe {
        let keys = (0..sys::gguf_get_n_kv(ctx))
            .map(|i| {
                let k = CStr::from_ptr(sys::gguf_get_key(ctx, i))
                    .to_string_lossy()
                    .into_owned();
                (k, sys::gguf_get_kv_type(ctx, i) as u32)
            })
            .collect();
        let tensors = (0..sys::gguf_get_n_tensors(ctx))
            .map(|i| {
                let name = CStr::from_ptr(sys::gguf_get_tensor_name(ctx, i))
                    .to_string_lossy()
                    .into_owned();
                let ne = std::slice::from_raw_parts(sys::gguf_get_tensor_ne(ctx, i), 4)
                    .iter()
                    .map(|&d| d as u64)
                    .collect();
                (
                    name,
                    sys::gguf_get_tensor_type(ctx, i) as u32,
                    sys::gguf_get_tensor_offset(ctx, i) as u64,
                    sys::gguf_get_tensor_size(ctx, i) as u64,
                    ne,
                )
            })
            .collect();
        let v = GgmlView {
            version: sys::gguf_get_version(ctx),
            alignment: sys::gguf_get_alignment(ctx) as u64,
            data_offset: sys::gguf_get_data_offset(ctx) as u64,
            keys,
            tensors,
        };
        sys::gguf_free(ctx);
        v
    };
    Some(view)
}

fn ggml_view_file(path: &Path) -> Option<GgmlView> {
    let c = CString::new(path.to_string_lossy().as_bytes()).ok()?;
    let params = sys::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: c is a valid NUL-terminated path; params asks for no allocation.
    ggml_view_ctx(unsafe { sys::gguf_init_from_file(c.as_ptr(), params) })
}

fn ggml_view_bytes(buf: &[u8]) -> Option<GgmlView> {
    let params = sys::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: buf outlives the call; ggml copies what it keeps.
    ggml_view_ctx(unsafe { sys::gguf_init_from_buffer(buf.as_ptr().cast(), buf.len(), params) })
}

fn our_view(f: &GgufFile) -> GgmlView {
    GgmlView {
        version: f.version,
        alignment: f.alignment,
        data_offset: f.data_offset,
        keys: f
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.value_type() as u32))
            .collect(),
        tensors: f
            .tensors
            .iter()
            .map(|t| {
                let mut ne = t.dims.clone();
                ne.resize(4, 1);
                (t.name.clone(), t.ty.code(), t.offset, t.size, ne)
            })
            .collect(),
    }
}

fn check_against_ggml(path: &Path) {
    let ours = GgufFile::open(path).expect("our reader");
    let theirs = ggml_view_file(path).expect("ggml reader");
    assert_eq!(our_view(&ours), theirs, "{}", path.display());
}

#[test]
fn reader_agrees_with_ggml_on_converted_models() {
    let tmp = tempfile::tempdir().unwrap();
    for scheme in [
        airavata::convert::Scheme::F32,
        airavata::convert::Scheme::F16,
        airavata::convert::Scheme::Q8_0,
    ] {
        let p = airavata::synth::tiny_test_gguf_with(tmp.path(), scheme).unwrap();
        check_against_ggml(&p);
    }
    if let Some(a) =
        common::assets("reader_agrees_with_ggml_on_converted_models (stories260K part)")
    {
        check_against_ggml(&a.join("stories260k-gguf/stories260K.gguf"));
    }
}

fn sample_file() -> Vec<u8> {
    let meta = vec![
        (
            "general.architecture".to_string(),
            GgufValue::String("llama".into()),
        ),
        ("x.u32".to_string(), GgufValue::U32(7)),
        ("x.arr".to_string(), GgufValue::f32s([1.0, 2.0, 3.0])),
        (
            "x.strs".to_string(),
            GgufValue::strings(["a".to_string(), "नमस्ते".to_string()]),
        ),
    ];
    let specs = vec![
        TensorSpec {
            name: "a".into(),
            dims: vec![32, 2],
            ty: GgmlType::Q8_0,
        },
        TensorSpec {
            name: "b".into(),
            dims: vec![5],
            ty: GgmlType::F32,
        },
    ];
    let (mut buf, offsets) = gguf::encode_header(&meta, &specs).unwrap();
    assert_eq!(offsets, vec![0, 96]);
    buf.resize(buf.len() + 96 + 20, 0x11);
    buf
}

#[test]
fn damaged_headers_are_rejected_with_reasons() {
    let good = sample_file();
    assert!(gguf::parse_bytes(&good).is_ok());
    assert!(ggml_view_bytes(&good).is_some());
    let err = gguf::parse_bytes(&good[..good.len() - 1]).unwrap_err();
    assert!(err.contains("runs past the end"), "{err}");
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(gguf::parse_bytes(&bad).unwrap_err().contains("magic"));
    let err = gguf::parse_bytes(&good[..40]).unwrap_err();
    assert!(err.contains("truncated"), "{err}");
    // A NUL inside a tensor name: ggml would read the name as "" (a C string), so it is rejected rather than
    // accepted under another name than ggml's (found by damaged_files_never_panic: byte 204 set to 0).
    let at = good
        .windows(9)
        .position(|w| w == b"\x01\0\0\0\0\0\0\0b")
        .expect("tensor name \"b\" in the sample");
    let mut bad = good.clone();
    bad[at + 8] = 0;
    let err = gguf::parse_bytes(&bad).unwrap_err();
    assert!(
        err.contains("tensor name #1") && err.contains("NUL byte"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Truncation anywhere is an error, never a panic.
    #[test]
    fn truncated_files_error(cut in 0usize..300) {
        let good = sample_file();
        let cut = cut.min(good.len() - 1);
        prop_assert!(gguf::parse_bytes(&good[..cut]).is_err());
    }

    /// Random byte damage never panics; whatever we accept, ggml accepts
    /// with the same tensor table.
    #[test]
    fn damaged_files_never_panic(flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..6)) {
        let mut buf = sample_file();
        for (i, b) in flips {
            let i = i % buf.len();
            buf[i] = b;
        }
        if let Ok((meta, tensors)) = gguf::parse_bytes(&buf) {
            let g = ggml_view_bytes(&buf);
            prop_assert!(g.is_some(), "we accepted a file ggml rejects");
            let g = g.unwrap();
            prop_assert_eq!(g.keys.len(), meta.len());
            prop_assert_eq!(g.tensors.len(), tensors.len());
            for (t, gt) in tensors.iter().zip(&g.tensors) {
                prop_assert_eq!(&t.name, &gt.0);
                prop_assert_eq!(t.offset, gt.2);
            }
        }
    }

    /// Metadata written by our writer reads back identically.
    #[test]
    fn writer_reader_round_trip(
        u in any::<u32>(), i in any::<i64>(), f in any::<f32>().prop_filter("not NaN", |x| !x.is_nan()),
        s in "\\PC{0,40}", arr in proptest::collection::vec(any::<i32>(), 0..50), b in any::<bool>(),
        rows in 1u64..4,
    ) {
        let meta = vec![
            ("k.u".to_string(), GgufValue::U32(u)),
            ("k.i".to_string(), GgufValue::I64(i)),
            ("k.f".to_string(), GgufValue::F32(f)),
            ("k.s".to_string(), GgufValue::String(s)),
            ("k.a".to_string(), GgufValue::i32s(arr)),
            ("k.b".to_string(), GgufValue::Bool(b)),
        ];
        let specs = vec![TensorSpec { name: "t".into(), dims: vec![256, rows], ty: GgmlType::Iq4Xs }];
        let (mut buf, _) = gguf::encode_header(&meta, &specs).unwrap();
        buf.resize(buf.len() + 136 * rows as usize, 0);
        let (m2, t2) = gguf::parse_bytes(&buf).unwrap();
        prop_assert_eq!(m2, meta);
        prop_assert_eq!(t2[0].size, 136 * rows);
    }
}
