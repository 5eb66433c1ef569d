//! The deployment manifests (`deploy/k8s/`) validated offline: built-in kinds
//! against the Kubernetes JSON schemas bundled by PyPI's `kubernetes-validate`
//! (strict: unknown fields fail), the KEDA ScaledObject and the InferencePool
//! against the JSON schemas in `deploy/k8s/schemas/` (`deploy/validate.py`).
//! The validator is installed into a venv under the target directory on the
//! first run; without network access the test prints `skipped: …`, except
//! under CI (`common::in_ci`), where that fails it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const VALIDATOR: &str = "kubernetes-validate==1.37.0";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python with the validator installed, or `None` (skip).
fn validator_or_skip(test: &str) -> Option<PathBuf> {
    common::pyenv::python_venv(test, "deploy-venv", &[VALIDATOR], "kubernetes_validate")
}

fn validate(python: &Path, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(python)
        .arg(root().join("deploy/validate.py"))
        .args(files)
        .output()
        .expect("run validate.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/k8s"))
        .expect("deploy/k8s")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_manifest_validates_offline() {
    let Some(python) = validator_or_skip("every_manifest_validates_offline") else {
        return;
    };
    let files = manifests();
    assert!(files.len() >= 5, "{files:?}");
    let (ok, text) = validate(&python, &files);
    assert!(ok, "{text}");
    for want in [
        "Deployment/airavata (Kubernetes",
        "Service/airavata (Kubernetes",
        "PersistentVolumeClaim/airavata-models (Kubernetes",
        "ScaledObject/airavata (CRD schema keda.sh/v1alpha1)",
        "InferencePool/airavata (CRD schema inference.networking.k8s.io/v1)",
        "Deployment/airavata-epp (Kubernetes",
    ] {
        let line = text.lines().find(|l| l.contains(want));
        assert!(
            line.is_some_and(|l| l.starts_with("ok   ")),
            "{want} not validated:\n{text}"
        );
    }
    assert!(!text.contains("FAIL"), "{text}");
}

#[test]
fn broken_manifests_fail_validation() {
    let Some(python) = validator_or_skip("broken_manifests_fail_validation") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "unknown-field.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 2\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec: {containers: [{name: c, image: i}]}\n",
            "replica",
        ),
        (
            "wrong-type.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  ports: [{port: eighty}]\n",
            "eighty",
        ),
        (
            "keda-int-threshold.yaml",
            "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: x}\nspec:\n  scaleTargetRef: {name: d}\n  triggers:\n    - type: prometheus\n      metadata: {serverAddress: 'http://p:9090', query: 'sum(x)', threshold: 16}\n",
            "16",
        ),
        (
            "pool-no-ports.yaml",
            "apiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  endpointPickerRef: {name: epp}\n",
            "targetPorts",
        ),
        (
            "unknown-kind.yaml",
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: x}\nspec: {}\n",
            "no schema",
        ),
    ];
    for (name, body, needle) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, body).expect("write");
        let (ok, text) = validate(&python, &[path]);
        assert!(!ok, "{name} passed:\n{text}");
        assert!(
            text.contains("FAIL") && text.contains(needle),
            "{name}: {text}"
        );
    }
}

/// The manifests name routes and metrics the server has (no validator needed).
#[test]
fn manifests_use_the_servers_routes_and_metric_names() {
    let read = |p: &str| std::fs::read_to_string(root().join(p)).expect(p);
    let deployment = read("deploy/k8s/deployment.yaml");
    let server = read("src/server/mod.rs");
    for route in ["/health", "/livez"] {
        assert!(deployment.contains(&format!("path: {route}")), "{route}");
        assert!(server.contains(&format!(".route(\"{route}\"")), "{route}");
    }
    let metrics = read("src/server/metrics.rs");
    let pool = read("deploy/k8s/inferencepool.yaml");
    let keda = read("deploy/k8s/keda-scaledobject.yaml");
    for name in [
        "airavata_requests_waiting",
        "airavata_requests_running",
        "airavata_kv_cache_usage_ratio",
    ] {
        assert!(pool.contains(&format!("-metric={name}")), "{name}");
        assert!(metrics.contains(&format!("\"{name}\"")), "{name}");
    }
    assert!(keda.contains("airavata_requests_waiting{engine=\"\"}"));
    let dockerfile = read("deploy/Dockerfile");
    assert!(dockerfile.contains("--features dynamic-backends"));
    assert!(dockerfile.contains("USER 10001"));
    assert!(dockerfile.contains("VOLUME [\"/models\"]"));
}
