//! Which filesystem a folder is on, to warn when change events cannot be
//! trusted (network filesystems deliver no events for remote writes).

use std::path::Path;

const NETWORK: &[&str] =
    &["nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "fuse.sshfs", "fuse.rclone", "lustre"];

/// The network filesystem type `path` is on, if it is on one.
pub fn network_fs(path: &Path) -> Option<String> {
    let canonical = std::fs::canonicalize(path).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let fs = fs_type_of(&canonical, &mountinfo)?;
    NETWORK.contains(&fs.as_str()).then_some(fs)
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
}
