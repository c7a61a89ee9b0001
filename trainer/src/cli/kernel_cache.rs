//! Where the CUDA backend keeps its compiled kernels and autotune results between runs.
//!
//! burn compiles and autotunes its GPU kernels at run time, which takes minutes the first time
//! (about 8 minutes before the first base-preset step on an H200). cubecl can keep both results
//! on disk, but by default it keeps only the autotune results and compiles every kernel again.
//! Unless a `cubecl.toml` or `burn.toml` above the working directory configures cubecl itself,
//! the trainer points both caches at one directory, so a second run starts in seconds.

use std::path::{Path, PathBuf};

use cubecl::config::cache::CacheConfig;
use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};

/// The environment variable that names the cache directory.
pub(crate) const KERNEL_CACHE_ENV: &str = "FLIGHTLM_KERNEL_CACHE";

/// The files cubecl reads its configuration from, in the working directory or above it.
const CUBECL_CONFIG_FILES: [&str; 4] = ["cubecl.toml", "CubeCL.toml", "burn.toml", "Burn.toml"];

/// Sets cubecl's configuration to keep its caches in [`kernel_cache_dir`], unless a cubecl
/// configuration file applies. Must run before the first CUDA operation. Returns the directory
/// used, or `None` where the user's configuration file decides.
pub(crate) fn use_kernel_caches() -> Option<PathBuf> {
    let working_dir = std::env::current_dir().ok()?;
    if configuration_file_above(&working_dir).is_some() {
        return None;
    }
    let dir = kernel_cache_dir(
        std::env::var_os(KERNEL_CACHE_ENV).map(PathBuf::from),
        std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )?;
    let mut current = CubeClRuntimeConfig::storage().lock();
    if current.is_some() {
        return None; // cubecl already read its configuration; setting it again would panic
    }
    *current = Some(std::sync::Arc::new(cached_config(&dir)));
    Some(dir)
}

/// `$FLIGHTLM_KERNEL_CACHE`, else `$XDG_CACHE_HOME/flightlm/kernels`, else
/// `$HOME/.cache/flightlm/kernels`.
fn kernel_cache_dir(
    explicit: Option<PathBuf>,
    xdg_cache_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Option<PathBuf> {
    let non_empty = |path: &PathBuf| !path.as_os_str().is_empty();
    explicit.filter(non_empty).or_else(|| {
        xdg_cache_home
            .filter(non_empty)
            .or_else(|| home.filter(non_empty).map(|home| home.join(".cache")))
            .map(|cache| cache.join("flightlm").join("kernels"))
    })
}

/// cubecl's defaults (and its `CUBECL_*` environment overrides) with both caches under `dir`.
fn cached_config(dir: &Path) -> CubeClRuntimeConfig {
    let mut config = CubeClRuntimeConfig::default();
    config.autotune.cache = CacheConfig::File(dir.join("autotune"));
    config.compilation.cache = Some(CacheConfig::File(dir.join("compilation")));
    config.override_from_env()
}

/// The first cubecl configuration file in `dir` or a directory above it, as cubecl searches.
fn configuration_file_above(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .flat_map(|ancestor| CUBECL_CONFIG_FILES.map(|name| ancestor.join(name)))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_follows_the_environment() {
        let path = |text: &str| Some(PathBuf::from(text));
        assert_eq!(
            kernel_cache_dir(path("/k"), path("/x"), path("/h")),
            path("/k")
        );
        assert_eq!(
            kernel_cache_dir(None, path("/x"), path("/h")),
            path("/x/flightlm/kernels")
        );
        assert_eq!(
            kernel_cache_dir(path(""), path(""), path("/h")),
            path("/h/.cache/flightlm/kernels")
        );
        assert_eq!(kernel_cache_dir(None, None, None), None);
    }

    #[test]
    fn both_caches_go_under_the_directory() {
        let config = cached_config(Path::new("/cache/kernels"));
        assert!(matches!(&config.autotune.cache,
            CacheConfig::File(path) if path == Path::new("/cache/kernels/autotune")));
        assert!(matches!(&config.compilation.cache,
            Some(CacheConfig::File(path)) if path == Path::new("/cache/kernels/compilation")));
    }

    #[test]
    fn cubecl_takes_the_configuration_before_its_first_use() {
        CubeClRuntimeConfig::set(cached_config(Path::new("/cache/kernels")));
        let config = CubeClRuntimeConfig::get();
        assert!(matches!(&config.compilation.cache,
            Some(CacheConfig::File(path)) if path == Path::new("/cache/kernels/compilation")));
    }

    #[test]
    fn a_configuration_file_above_the_working_directory_wins() {
        let root =
            std::env::temp_dir().join(format!("flightlm-kernel-cache-{}", std::process::id()));
        let nested = root.join("a").join("b");
        std::fs::create_dir_all(&nested).expect("create dirs");
        assert_eq!(configuration_file_above(&nested), None);
        std::fs::write(root.join("a").join("burn.toml"), "").expect("write");
        assert_eq!(
            configuration_file_above(&nested),
            Some(root.join("a").join("burn.toml"))
        );
        std::fs::remove_dir_all(&root).expect("clean up");
    }
}
