//! Embeds the git revision and the linked llama.cpp build for `--version`.
use std::process::Command;

fn main() {
    let rev = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=AIRAVATA_GIT_REV={rev}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");

    // The pin file records which llama.cpp build llama-cpp-sys-2 vendors.
    println!("cargo:rerun-if-changed=vendor/llama-cpp.pin");
    let pin = std::fs::read_to_string("vendor/llama-cpp.pin").unwrap_or_default();
    let field = |key: &str| {
        pin.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".to_string())
    };
    println!(
        "cargo:rustc-env=AIRAVATA_LLAMA_CPP_BUILD={}",
        field("llama_cpp_build")
    );

    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let mut sys_version = "unknown".to_string();
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == "name = \"llama-cpp-sys-2\"" {
            if let Some(v) = lines
                .next()
                .and_then(|v| v.trim().strip_prefix("version = "))
            {
                sys_version = v.trim_matches('"').to_string();
            }
            break;
        }
    }
    println!("cargo:rustc-env=AIRAVATA_LLAMA_CPP_SYS_VERSION={sys_version}");
}
