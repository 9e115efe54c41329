//! Which filesystem a folder is on: to warn when change events cannot be
//! trusted (network filesystems deliver no events for remote writes), and to
//! know whether a file's stamp can prove its bytes (a local one keeping a ctime).

use std::path::Path;

const NETWORK: &[&str] =
    &["nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "fuse.sshfs", "fuse.rclone", "lustre"];

/// Local filesystems whose change time (ctime) the kernel sets on every
/// write, from its own clock: a file's stamp can prove its bytes there.
const LOCAL_WITH_CTIME: &[&str] =
    &["ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "bcachefs", "jfs", "reiserfs"];

/// Whether `path` is on a filesystem where a stamp proves a file's bytes
/// (see [`crate::source::Stamp::settled`]); unknown ones are not trusted.
pub fn stamps_prove(path: &Path) -> bool {
    fs_type(path).is_some_and(|fs| keeps_ctime(&fs))
}

/// Whether a filesystem of this type is one of [`LOCAL_WITH_CTIME`].
fn keeps_ctime(fs: &str) -> bool {
    LOCAL_WITH_CTIME.contains(&fs)
}

/// The network filesystem type `path` is on, if it is on one.
pub fn network_fs(path: &Path) -> Option<String> {
    fs_type(path).filter(|fs| NETWORK.contains(&fs.as_str()))
}

/// The type of the filesystem `path` is on (`None`: it cannot be told).
fn fs_type(path: &Path) -> Option<String> {
    let canonical = std::fs::canonicalize(path).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    fs_type_of(&canonical, &mountinfo)
}

/// The type of the mount holding `path`, from `/proc/self/mountinfo` text.
pub fn fs_type_of(path: &Path, mountinfo: &str) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        let mut parts = line.split(" - ");
        let (Some(head), Some(tail)) = (parts.next(), parts.next()) else { continue };
        let Some(mount_point) = head.split(' ').nth(4) else { continue };
        let Some(fs) = tail.split(' ').next() else { continue };
        let mount_point = unescape(mount_point);
        if path.starts_with(&mount_point) && best.as_ref().is_none_or(|(len, _)| mount_point.len() >= *len) {
            best = Some((mount_point.len(), fs.to_string()));
        }
    }
    best.map(|(_, fs)| fs)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_mount_point_wins() {
        let info = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                    40 22 0:50 / /mnt/shared rw - nfs4 server:/export rw\n\
                    41 22 0:51 / /mnt/with\\040space rw - cifs //srv/x rw\n";
        assert_eq!(fs_type_of(Path::new("/srv/app/data"), info).as_deref(), Some("ext4"));
        assert_eq!(fs_type_of(Path::new("/mnt/shared/data"), info).as_deref(), Some("nfs4"));
        assert_eq!(fs_type_of(Path::new("/mnt/with space/x"), info).as_deref(), Some("cifs"));
        assert_eq!(fs_type_of(Path::new("/mnt/sharedother"), info).as_deref(), Some("ext4"));
    }

    #[test]
    fn stamps_are_trusted_only_on_local_filesystems_that_keep_a_ctime() {
        for fs in ["ext4", "xfs", "btrfs", "tmpfs", "overlay"] {
            assert!(keeps_ctime(fs), "{fs}");
        }
        for fs in ["nfs", "nfs4", "cifs", "fuse.sshfs", "fuse.gcsfuse", "9p", "vfat", "something-new"] {
            assert!(!keeps_ctime(fs), "{fs}");
        }
        // This test's own folder (the integration tests rely on stamps there).
        assert!(stamps_prove(&std::env::temp_dir()), "the temporary folder's filesystem keeps no ctime?");
    }
}
