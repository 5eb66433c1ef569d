//! Our CUDA kernels ship as a patch over the pinned llama.cpp source
//! (`vendor/airavata-cuda/`, applied by `scripts/apply-cuda-patches.sh` in
//! every CUDA-backend build). No GPU here: this checks that the patch set
//! applies cleanly to the pinned source, that applying copies the kernel
//! files and hooks the dispatch, and that a second run changes nothing; and
//! that the kernels' index math and decode, mirrored in
//! `mmm_fragments_emu.py`, still hold.

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

/// Only added lines: every line of `stock` is still in `now`, in order.
fn assert_only_added(stock: &str, now: &str, what: &str) {
    let mut rest = now.lines();
    for line in stock.lines() {
        assert!(rest.any(|l| l == line), "{what}: stock line lost: {line:?}");
    }
}

/// Each patch: its file name, the stock file it changes, and the lines it adds.
const PATCHES: &[(&str, &str, &[&str])] = &[
    (
        "0001-fattn-airavata-decode.patch",
        "fattn.cu",
        &[
            "#include \"fattn-airavata.cuh\"",
            "    if (airavata_fattn_decode(ctx, dst)) {",
        ],
    ),
    (
        "0002-mmvq-airavata-iq4xs.patch",
        "mmvq.cu",
        &[
            "#include \"mmv-airavata.cuh\"",
            "    if (ids == nullptr && fusion == nullptr && airavata_mul_mat_vec(ctx, src0, src1, dst)) {",
        ],
    ),
    (
        "0003-mul-mat-airavata-iq4xs.patch",
        "ggml-cuda.cu",
        &[
            "#include \"ggml-cuda/mmv-airavata.cuh\"",
            "    if (airavata_mul_mat_vec(ctx, src0, src1, dst)) {",
        ],
    ),
];

#[test]
fn cuda_patches_apply_cleanly_to_the_pinned_source_and_only_once() {
    let Some(src) = pinned_source("cuda_patches_apply_cleanly_to_the_pinned_source_and_only_once")
    else {
        return;
    };
    let (ok, text) = apply(&["--check"], &src);
    assert!(ok, "{text}");
    for (patch, _, _) in PATCHES {
        assert!(
            text.contains(&format!("applies cleanly: {patch}")),
            "{text}"
        );
    }

    // Apply to a copy of the files the patch set touches.
    let tmp = tempfile::tempdir().expect("tempdir");
    let cuda = tmp.path().join("ggml/src/ggml-cuda");
    std::fs::create_dir_all(&cuda).expect("mkdir");
    let mut stock = Vec::new();
    for (_, file, _) in PATCHES {
        let text = std::fs::read_to_string(src.join("ggml/src/ggml-cuda").join(file)).expect(file);
        std::fs::write(cuda.join(file), &text).expect("copy");
        stock.push(text);
    }
    let (ok, text) = apply(&[], tmp.path());
    assert!(ok, "{text}");
    let mut patched = Vec::new();
    for ((patch, file, added), stock) in PATCHES.iter().zip(&stock) {
        assert!(text.contains(&format!("applied: {patch}")), "{text}");
        let now = std::fs::read_to_string(cuda.join(file)).expect("patched");
        for line in *added {
            assert!(
                now.lines().any(|l| l == *line),
                "{file}: {line:?} not added"
            );
        }
        assert_only_added(stock, &now, file);
        patched.push(now);
    }
    for f in [
        "fattn-airavata.cu",
        "fattn-airavata.cuh",
        "airavata-attn-decode.cuh",
        "mmv-airavata.cu",
        "mmv-airavata.cuh",
        "airavata-mmv-iq4xs.cuh",
        "airavata-mmm-iq4xs.cuh",
        "airavata-switch.cuh",
    ] {
        assert!(cuda.join(f).is_file(), "{f} not copied");
    }
    // One switch back to stock, used by every kernel of ours.
    let switch = std::fs::read_to_string(cuda.join("airavata-switch.cuh")).expect("switch");
    assert!(switch.contains("AIRAVATA_CUDA_KERNELS"), "{switch}");
    for f in ["fattn-airavata.cu", "mmv-airavata.cu"] {
        let kernel = std::fs::read_to_string(cuda.join(f)).expect("kernel");
        assert!(kernel.contains("#include \"airavata-switch.cuh\""), "{f}");
        assert!(kernel.contains("if (!airavata_kernels_on()) {"), "{f}");
    }

    // A second run finds the patches applied and leaves the files as they are.
    let (ok, text) = apply(&[], tmp.path());
    assert!(ok, "{text}");
    for ((patch, file, _), before) in PATCHES.iter().zip(&patched) {
        assert!(
            text.contains(&format!("already applied: {patch}")),
            "{text}"
        );
        assert_eq!(
            &std::fs::read_to_string(cuda.join(file)).expect("again"),
            before
        );
    }
}

/// The first C++ compiler found, or None.
fn cxx() -> Option<String> {
    let candidates = std::env::var("CXX")
        .into_iter()
        .chain(["c++", "g++", "clang++"].map(String::from));
    candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn backend_ops_cases_insert_once_and_compile_against_the_pinned_source() {
    let Some(src) =
        pinned_source("backend_ops_cases_insert_once_and_compile_against_the_pinned_source")
    else {
        return;
    };
    let stock =
        std::fs::read_to_string(src.join("tests/test-backend-ops.cpp")).expect("test-backend-ops");
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("test-backend-ops.cpp");
    std::fs::write(&file, &stock).expect("copy");
    let run = || {
        let out = Command::new("python3")
            .arg(root().join("scripts/backend-ops-cases.py"))
            .arg(&file)
            .output()
            .expect("run backend-ops-cases.py");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(&file).expect("read back")
    };
    let once = run();
    assert_eq!(run(), once, "a second run changed the file");
    for var in ["AIRAVATA_FA_EVAL", "AIRAVATA_MM_EVAL"] {
        assert_eq!(
            once.matches(&format!("if (getenv(\"{var}\")) {{")).count(),
            1,
            "{var}"
        );
    }
    // llama.cpp's own cases are all still there, in order.
    assert_only_added(&stock, &once, "test-backend-ops.cpp");
    let Some(cxx) = cxx() else {
        assert!(!common::in_ci(), "no C++ compiler in CI");
        eprintln!("skipped the compile step: no C++ compiler");
        return;
    };
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-fsyntax-only"])
        .arg("-I")
        .arg(src.join("ggml/include"))
        .arg("-I")
        .arg(src.join("include"))
        .arg("-I")
        .arg(src.join("common"))
        .arg(&file)
        .output()
        .expect("run the C++ compiler");
    assert!(
        out.status.success(),
        "{cxx}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The kernels cannot run here, but their index math can: the emulator
/// mirrors the many-column kernel's codebook lookup (all 65 536 half-words),
/// its mma fragment layouts, reduction tile, staging, activation layout and
/// sub-block scales, and the matvec's weight staging against the form last
/// measured on a GPU, and exits 1 on any mismatch.
#[test]
fn kernel_index_math_holds_in_the_emulator() {
    let script = root().join("vendor/airavata-cuda/mmm_fragments_emu.py");
    let out = match Command::new("python3").arg(&script).output() {
        Ok(out) => out,
        Err(e) => {
            assert!(!common::in_ci(), "python3 is missing in CI: {e}");
            eprintln!("skipped kernel_index_math_holds_in_the_emulator: no python3 ({e})");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checks: Vec<&str> = stdout.lines().filter(|l| l.ends_with(": ok")).collect();
    assert_eq!(checks.len(), 7, "seven checks, each ok:\n{stdout}");
    assert!(!stdout.contains("MISMATCH"), "{stdout}");
}
