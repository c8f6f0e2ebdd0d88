//! Reading the files a configuration names (the tools file, schema files,
//! `${file:...}` secrets), each within a size bound.
//!
//! A path written by mistake (`/dev/zero`, a log file) must be refused with
//! an error that names it, not read into memory until the kernel kills the
//! process: the reload watcher reads every one of these files each time it
//! looks for changes, so one bad edit of a live ConfigMap would otherwise
//! take a serving sidecar down. std's `fs::read` has no bound; `Read::take`
//! is the bound, here in one place. Any kind of file is read (a FIFO blocks
//! until written, as the tests that hold a compile on one rely on).

use std::io::{self, Read};
use std::path::Path;

/// The tools file: real ones are tens of KB; schemas inlined in it included,
/// far under this.
pub const MAX_TOOLS_FILE_BYTES: u64 = 16 << 20;

/// One schema file named under `schema_files`.
pub const MAX_SCHEMA_FILE_BYTES: u64 = 16 << 20;

/// A `${file:...}` or `${env:...}` secret. Credentials are small (an
/// RSA-4096 PEM key is about 3.2 KB); a larger one is a mistake (a log file),
/// refused rather than read into memory and compiled into the redactor.
pub const MAX_SECRET_BYTES: u64 = 16 * 1024;

/// `path`'s text, refused past `max` bytes.
pub fn read_text(path: &Path, max: u64) -> io::Result<String> {
    let bytes = read_bytes(path, max)?;
    String::from_utf8(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not UTF-8 text: {e}")))
}

/// `path`'s bytes, under the same rules as [`read_text`].
pub fn read_bytes(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)?;
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        )
    };
    // A regular file is refused unread when its size says so; the bounded
    // read covers one that grows meanwhile, and devices (whose size says
    // nothing).
    if meta.is_file() && meta.len() > max {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_large());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_within_its_bound_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tools.yaml");
        std::fs::write(&path, "tools: []\n").unwrap();
        assert_eq!(read_text(&path, 10).unwrap(), "tools: []\n");
    }

    #[test]
    fn a_file_past_its_bound_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, "x".repeat(11)).unwrap();
        let e = read_text(&path, 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("larger than 10 bytes"), "{e}");
    }

    #[test]
    fn an_endless_device_is_read_no_further_than_its_bound() {
        let e = read_text(Path::new("/dev/zero"), 10).unwrap_err();
        assert!(e.to_string().contains("larger than 10 bytes"), "{e}");
    }

    #[test]
    fn a_missing_file_is_the_os_error() {
        let e = read_text(Path::new("/nonexistent/tools.yaml"), 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
