//! Refuses data directories that cannot protect their contents (PC-16.4):
//! a file system without POSIX permissions (the vendor refused FAT32 for the
//! same reason) or a directory that other users may write to.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Why a data directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create or read data directory {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "data directory {path} is writable by other users (mode {mode:o}); \
         run `chmod o-w {path}` or choose another directory"
    )]
    WorldWritable { path: String, mode: u32 },
    #[error(
        "data directory {path} is on a file system without POSIX permissions \
         (a file created with mode 600 reads back as {got:o}); FAT-style file systems \
         cannot protect chat data: use ext4, xfs, btrfs or similar"
    )]
    NoPermissions { path: String, got: u32 },
}

/// Creates the directory (mode 700) if needed and checks it.
pub fn check_data_dir(dir: &Path) -> Result<(), DataDirError> {
    let path = dir.display().to_string();
    let io = |source| DataDirError::Io {
        path: path.clone(),
        source,
    };
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    let mode = fs::metadata(dir).map_err(io)?.permissions().mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(DataDirError::WorldWritable { path, mode });
    }
    // One probe per process: nodes of a pool may share a data directory.
    let probe = dir.join(format!(".pchat-permission-probe-{}", std::process::id()));
    fs::write(&probe, b"probe").map_err(io)?;
    let result = (|| {
        fs::set_permissions(&probe, fs::Permissions::from_mode(0o600))?;
        let first = fs::metadata(&probe)?.permissions().mode() & 0o777;
        fs::set_permissions(&probe, fs::Permissions::from_mode(0o640))?;
        let second = fs::metadata(&probe)?.permissions().mode() & 0o777;
        Ok::<_, std::io::Error>((first, second))
    })();
    let _ = fs::remove_file(&probe);
    let (first, second) = result.map_err(io)?;
    if first != 0o600 || second != 0o640 {
        return Err(DataDirError::NoPermissions { path, got: first });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_writable_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_data_dir(dir.path()).unwrap_err();
        assert!(matches!(err, DataDirError::WorldWritable { .. }), "{err}");
        assert!(err.to_string().contains("chmod o-w"));
    }

    #[test]
    fn private_directory_is_accepted_and_created() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("fresh");
        check_data_dir(&data).unwrap();
        let mode = fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
