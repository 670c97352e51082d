//! The optimized-graph cache with real sessions: the first load saves each sub-model's
//! optimized graph, the next load opens those (and draws the same picture, bit for bit), and a
//! damaged entry costs only the speed-up.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{TextCase, fixtures, generate_one, prepare};
use easeld::generation::sampler::SeededNoise;
use easeld::model::optimized_cache::{GRAPH, OptimizedCache};
use easeld::model::{LoadedModel, ModelFolder};

fn load(cache_dir: Option<&Path>) -> LoadedModel {
    let mut runtime = common::runtime();
    runtime.optimized_cache = cache_dir.map(|dir| OptimizedCache::new(dir.to_path_buf(), 0, &runtime.library));
    let root = fixtures().join("models/sd1-tiny");
    let folder = ModelFolder::open("sd1-tiny", &root).unwrap();
    LoadedModel::load(&runtime, Arc::new(folder), 1).unwrap()
}

fn picture(model: &mut LoadedModel) -> Vec<u8> {
    let case: Vec<TextCase> = TextCase::read_manifest("references/manifest.json");
    let prepared = prepare(model, case[0].request(1));
    generate_one(model, &prepared, &mut SeededNoise::new(1), &mut |_| {}).pixels
}

/// The cache's complete entries (each a folder holding a saved graph).
fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.join(GRAPH).is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

#[test]
fn the_second_load_opens_the_saved_graphs_and_draws_the_same_picture() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("optimized");
    let expected = picture(&mut load(None));

    let mut first = load(Some(&cache));
    let saved = entries(&cache);
    assert_eq!(saved.len(), 3, "text encoder, UNet and VAE decoder: {saved:?}");
    assert_eq!(picture(&mut first), expected);
    drop(first);

    // Entries are found by their source files: the second load writes nothing new.
    let stamp = |paths: &[std::path::PathBuf]| -> Vec<_> {
        paths
            .iter()
            .map(|p| std::fs::metadata(p.join(GRAPH)).unwrap().modified().unwrap())
            .collect()
    };
    let before = stamp(&saved);
    let mut second = load(Some(&cache));
    assert_eq!(entries(&cache), saved);
    assert_eq!(stamp(&saved), before, "the saved graphs were read, not rewritten");
    assert_eq!(
        picture(&mut second),
        expected,
        "the optimized graphs compute the same picture"
    );
    drop(second);

    // A damaged entry: the load falls back to the source and saves the graph again.
    for entry in &saved {
        std::fs::write(entry.join(GRAPH), b"not a graph").unwrap();
    }
    let mut third = load(Some(&cache));
    assert_eq!(picture(&mut third), expected);
    assert_eq!(entries(&cache).len(), 3);
    for entry in entries(&cache) {
        assert_ne!(std::fs::read(entry.join(GRAPH)).unwrap(), b"not a graph");
    }
}
