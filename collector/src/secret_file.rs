//! Reading the secrets a configuration names (token, password and API key
//! files), at load, so that a bad file fails `check-config` and `serve` before
//! anything binds. The `Secret` type itself is `domesday_model::secret` (no I/O there).

use std::path::Path;

use domesday_model::secret::Secret;

/// Reads a secret from the file a config key names: trailing line ends
/// stripped (surrounding whitespace for tokens, `trim`), refused when
/// unreadable or empty. The reason names the file; the caller adds the key and its line.
pub fn read_secret_file(path: &Path, trim: bool) -> Result<Secret, String> {
    let raw = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v = if trim { raw.trim() } else { raw.trim_end_matches(['\r', '\n']) };
    if v.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret::new(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_read_trimmed_and_refused_when_empty_or_missing() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("k");
        std::fs::write(&f, " key \r\n").expect("write");
        assert_eq!(read_secret_file(&f, true).expect("read").expose(), "key");
        assert_eq!(read_secret_file(&f, false).expect("read").expose(), " key ");
        std::fs::write(&f, "\n").expect("write");
        assert!(read_secret_file(&f, true).expect_err("empty").contains("is empty"));
        let missing = dir.path().join("nope");
        let e = read_secret_file(&missing, true).expect_err("missing");
        assert!(e.contains("cannot read") && e.contains("nope"), "{e}");
    }
}
