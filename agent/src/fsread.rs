//! Plain `std::fs` access to sysfs/procfs attribute files: handles are opened
//! once and re-read with `pread` at offset 0 (what sysfs expects), and every
//! failure is classified into the `reason` vocabulary.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use domesday_model::vocab::Reason;

/// Why a read failed: the reason label and a sentence for logs and `probe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadError {
    pub reason: Reason,
    pub detail: String,
}

impl ReadError {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        ReadError { reason, detail: detail.into() }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.detail, self.reason)
    }
}

/// Maps an I/O error to a reason. Sysfs answers ENODEV/ENXIO for a device that
/// went away and ENODATA for a disabled sensor: both are "missing".
pub fn classify(e: &io::Error) -> Reason {
    match e.kind() {
        io::ErrorKind::NotFound => Reason::Missing,
        io::ErrorKind::PermissionDenied => Reason::Permission,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Reason::Timeout,
        _ => match e.raw_os_error() {
            Some(19) | Some(6) | Some(61) => Reason::Missing, // ENODEV, ENXIO, ENODATA
            _ => Reason::Io,
        },
    }
}

/// One attribute file, kept open between reads.
#[derive(Debug)]
pub struct SysFile {
    path: PathBuf,
    file: Option<File>,
}

impl SysFile {
    pub fn new(path: PathBuf) -> Self {
        SysFile { path, file: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the whole file (lossy UTF-8: some drivers write Latin-1 labels).
    pub fn read(&mut self) -> Result<String, ReadError> {
        let path = &self.path;
        let err = |e: io::Error| ReadError::new(classify(&e), format!("{}: {e}", path.display()));
        if self.file.is_none() {
            self.file = Some(File::open(path).map_err(err)?);
        }
        let Some(file) = self.file.as_ref() else {
            return Err(ReadError::new(Reason::Io, format!("{}: not open", path.display())));
        };
        let mut buf = [0u8; 4096];
        let mut len = 0;
        loop {
            match file.read_at(&mut buf[len..], len as u64) {
                Ok(0) => break,
                Ok(n) => {
                    len += n;
                    if len == buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // A handle on a removed device stays broken: reopen next time.
                    self.file = None;
                    return Err(err(e));
                }
            }
        }
        Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
    }

    /// Reads an unsigned integer (µJ, µW, RPM…).
    pub fn read_u64(&mut self) -> Result<u64, ReadError> {
        let text = self.read()?;
        parse_u64(&text).map_err(|d| ReadError::new(Reason::Parse, format!("{}: {d}", self.path.display())))
    }

    /// Reads a signed integer (m°C can be negative).
    pub fn read_i64(&mut self) -> Result<i64, ReadError> {
        let text = self.read()?;
        parse_i64(&text).map_err(|d| ReadError::new(Reason::Parse, format!("{}: {d}", self.path.display())))
    }
}

/// Parses a sysfs unsigned integer; the error quotes what was found.
pub fn parse_u64(text: &str) -> Result<u64, String> {
    let t = text.trim();
    t.parse::<u64>().map_err(|_| format!("expected an unsigned integer, found {:?}", shorten(t)))
}

/// Parses a sysfs signed integer.
pub fn parse_i64(text: &str) -> Result<i64, String> {
    let t = text.trim();
    t.parse::<i64>().map_err(|_| format!("expected an integer, found {:?}", shorten(t)))
}

fn shorten(t: &str) -> String {
    t.chars().take(40).collect()
}

/// Reads a small text file once (names, labels, DMI), trimmed; `None` if absent.
pub fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| String::from_utf8_lossy(&b).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_errors() {
        assert_eq!(classify(&io::Error::from(io::ErrorKind::NotFound)), Reason::Missing);
        assert_eq!(classify(&io::Error::from(io::ErrorKind::PermissionDenied)), Reason::Permission);
        assert_eq!(classify(&io::Error::from_raw_os_error(19)), Reason::Missing);
        assert_eq!(classify(&io::Error::from_raw_os_error(21)), Reason::Io); // EISDIR
    }

    #[test]
    fn parse_tolerates_whitespace_and_rejects_garbage() {
        assert_eq!(parse_u64(" 41785212947\n"), Ok(41785212947));
        assert!(parse_u64("unknown\n").is_err());
        assert!(parse_u64("").is_err());
        assert!(parse_i64("95.0%").is_err());
        assert_eq!(parse_i64("-5000\n"), Ok(-5000));
    }

    #[test]
    fn rereads_an_open_file_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("energy_uj");
        std::fs::write(&p, "100\n").expect("write");
        let mut f = SysFile::new(p.clone());
        assert_eq!(f.read_u64(), Ok(100));
        std::fs::write(&p, "250\n").expect("write");
        assert_eq!(f.read_u64(), Ok(250));
        let mut missing = SysFile::new(dir.path().join("nope"));
        assert_eq!(missing.read().map_err(|e| e.reason), Err(Reason::Missing));
        let mut d = SysFile::new(dir.path().to_path_buf());
        assert_eq!(d.read().map_err(|e| e.reason), Err(Reason::Io));
    }
}
