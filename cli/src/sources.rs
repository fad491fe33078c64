//! Reading manifests from `-f` arguments: files, directories of `*.yaml` / `*.yml`
//! (sorted, not recursive) and `-` for standard input.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The text of one manifest source and the name errors should show for it.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub text: String,
}

pub fn read_sources(args: &[PathBuf]) -> anyhow::Result<Vec<Source>> {
    let mut sources = Vec::new();
    for arg in args {
        if arg.as_os_str() == "-" {
            let text = read_bounded(std::io::stdin().lock(), "standard input")?;
            sources.push(Source { name: "-".to_owned(), text });
            continue;
        }
        let meta = std::fs::metadata(arg).with_context(|| format!("cannot read {}", arg.display()))?;
        if meta.is_dir() {
            let files = manifest_files_in(arg)?;
            if files.is_empty() {
                anyhow::bail!("no manifests (*.yaml, *.yml) in directory {}", arg.display());
            }
            for file in files {
                sources.push(read_file(&file)?);
            }
        } else {
            sources.push(read_file(arg)?);
        }
    }
    Ok(sources)
}

fn manifest_files_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list directory {}", dir.display()))? {
        let path = entry.with_context(|| format!("cannot list directory {}", dir.display()))?.path();
        let is_manifest = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
        if is_manifest && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read_file(path: &Path) -> anyhow::Result<Source> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = read_bounded(file, &path.display().to_string())?;
    Ok(Source { name: path.display().to_string(), text })
}

/// Reads at most [`MAX_MANIFEST_BYTES`](orch_api::manifest::MAX_MANIFEST_BYTES) (a
/// larger source is refused without reading it all: `-f /dev/zero` ends).
fn read_bounded(reader: impl Read, name: &str) -> anyhow::Result<String> {
    let limit = orch_api::manifest::MAX_MANIFEST_BYTES;
    let mut bytes = Vec::new();
    reader.take(u64::try_from(limit).unwrap_or(u64::MAX) + 1).read_to_end(&mut bytes).with_context(|| format!("cannot read {name}"))?;
    if bytes.len() > limit {
        anyhow::bail!("{name}: more than {} MiB of manifests; the limit is {} MiB", limit >> 20, limit >> 20);
    }
    String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{name} is not UTF-8 text: {e}"))
}
