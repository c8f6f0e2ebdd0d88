//! The seed corpus: small files under `tests/fuzz/corpus/<target>/`, one
//! input each, replayed on every run and mixed (mutated) into generation.

use std::path::PathBuf;

/// `(file name, contents)` of every seed of `target`, sorted by name.
pub fn load(target: &str) -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target);
    let mut seeds: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, text)
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "the corpus {} is empty", dir.display());
    seeds
}
