//! Our CUDA kernels ship as a patch over the pinned llama.cpp source
//! (`vendor/airavata-cuda/`, applied by `scripts/apply-cuda-patches.sh` in
//! every CUDA-backend build). No GPU here: this checks that the patch set
//! applies cleanly to the pinned source, that applying copies the kernel
//! files and hooks the dispatch, and that a second run changes nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The pinned source (fetched by `scripts/fetch-llama-cpp.sh`, which CI's
/// tool build runs), or None after printing `skipped`.
fn pinned_source(test: &str) -> Option<PathBuf> {
    let src = root().join("vendor/llama.cpp");
    if src.join("ggml/src/ggml-cuda/fattn.cu").is_file() {
        return Some(src);
    }
    assert!(
        !common::in_ci(),
        "{} is missing in CI (scripts/fetch-llama-cpp.sh)",
        src.display()
    );
    eprintln!(
        "skipped {test}: {} absent (scripts/fetch-llama-cpp.sh)",
        src.display()
    );
    None
}

fn apply(args: &[&str], src: &Path) -> (bool, String) {
    let out = Command::new("bash")
        .arg(root().join("scripts/apply-cuda-patches.sh"))
        .args(args)
        .arg(src)
        .output()
        .expect("run apply-cuda-patches.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn cuda_patches_apply_cleanly_to_the_pinned_source_and_only_once() {
    let Some(src) = pinned_source("cuda_patches_apply_cleanly_to_the_pinned_source_and_only_once")
    else {
        return;
    };
    let (ok, text) = apply(&["--check"], &src);
    assert!(ok, "{text}");
    assert!(
        text.contains("applies cleanly: 0001-fattn-airavata-decode.patch"),
        "{text}"
    );

    // Apply to a copy of the files the patch set touches.
    let tmp = tempfile::tempdir().expect("tempdir");
    let cuda = tmp.path().join("ggml/src/ggml-cuda");
    std::fs::create_dir_all(&cuda).expect("mkdir");
    let stock = std::fs::read_to_string(src.join("ggml/src/ggml-cuda/fattn.cu")).expect("fattn.cu");
    std::fs::write(cuda.join("fattn.cu"), &stock).expect("copy");
    let (ok, text) = apply(&[], tmp.path());
    assert!(ok, "{text}");
    assert!(
        text.contains("applied: 0001-fattn-airavata-decode.patch"),
        "{text}"
    );
    let patched = std::fs::read_to_string(cuda.join("fattn.cu")).expect("patched");
    assert!(
        patched.contains("#include \"fattn-airavata.cuh\""),
        "{patched}"
    );
    assert!(
        patched.contains("if (airavata_fattn_decode(ctx, dst)) {"),
        "{patched}"
    );
    // Only added lines: every stock line is still there, in order.
    let mut rest = patched.lines();
    for line in stock.lines() {
        assert!(rest.any(|l| l == line), "stock line lost: {line:?}");
    }
    for f in [
        "fattn-airavata.cu",
        "fattn-airavata.cuh",
        "airavata-attn-decode.cuh",
    ] {
        assert!(cuda.join(f).is_file(), "{f} not copied");
    }
    let kernel = std::fs::read_to_string(cuda.join("fattn-airavata.cu")).expect("kernel");
    assert!(
        kernel.contains("AIRAVATA_CUDA_KERNELS"),
        "no switch back to stock"
    );

    // A second run finds the patch applied and leaves the file as it is.
    let (ok, text) = apply(&[], tmp.path());
    assert!(ok, "{text}");
    assert!(
        text.contains("already applied: 0001-fattn-airavata-decode.patch"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(cuda.join("fattn.cu")).expect("again"),
        patched
    );
}
