//! The checks on a downloaded binary besides its signature: that it is an ELF executable for
//! this machine, and that it starts and names the version it was signed as.
//!
//! Owns: reading the ELF header and running the candidate with `--version`. Must not:
//! replace any file (that is [`super::swap`]).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `e_machine` of this build's architecture.
pub const MACHINE: u16 = match std::env::consts::ARCH.as_bytes() {
    b"x86_64" => 62,
    b"aarch64" => 183,
    b"arm" => 40,
    b"x86" => 3,
    b"riscv64" => 243,
    b"powerpc64" => 21,
    b"s390x" => 22,
    b"mips" | b"mips64" => 8,
    _ => 0,
};
/// `EI_CLASS`: 2 for 64-bit, 1 for 32-bit.
const CLASS: u8 = if cfg!(target_pointer_width = "64") {
    2
} else {
    1
};
/// `EI_DATA`: 1 for little-endian, 2 for big-endian.
const DATA: u8 = if cfg!(target_endian = "little") { 1 } else { 2 };

/// Checks the first bytes of an ELF file: magic, class, byte order, type (executable or
/// position-independent executable) and machine must be this build's.
pub fn elf_header(head: &[u8]) -> Result<(), String> {
    if head.len() < 20 || &head[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    let (class, data) = (head[4], head[5]);
    if class != CLASS {
        return Err(format!(
            "an ELF file of class {class} (this agent runs {} bit)",
            if CLASS == 2 { 64 } else { 32 }
        ));
    }
    if data != DATA {
        return Err(format!(
            "an ELF file of byte order {data} (this machine is {})",
            if DATA == 1 {
                "little-endian"
            } else {
                "big-endian"
            }
        ));
    }
    let half = |i: usize| {
        let b = [head[i], head[i + 1]];
        if DATA == 1 {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    };
    let (kind, machine) = (half(16), half(18));
    if kind != 2 && kind != 3 {
        return Err(format!("an ELF file of type {kind}, not an executable"));
    }
    if machine != MACHINE {
        return Err(format!(
            "an ELF executable for machine {machine}, not for this {} ({MACHINE})",
            std::env::consts::ARCH
        ));
    }
    Ok(())
}

/// Reads the ELF header of `path` and checks it (see [`elf_header`]).
pub fn elf_file(path: &Path) -> Result<(), String> {
    let mut head = [0u8; 64];
    let mut f = std::fs::File::open(path).map_err(|e| format!("opening it: {e}"))?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading it: {e}")),
        }
    }
    elf_header(&head[..n])
}

/// How long the candidate may take to print its version.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(20);
/// The most output read from the candidate.
const MAX_OUTPUT: usize = 4096;

/// Runs `launcher... path --version` and checks it prints `docker-ctl-agent <version>` and
/// exits 0, within [`VERSION_TIMEOUT`]; a candidate that hangs is killed.
pub fn version_output(launcher: &[String], path: &Path, version: &str) -> Result<(), String> {
    let mut cmd = match launcher.split_first() {
        Some((prog, args)) => {
            let mut c = Command::new(prog);
            c.args(args).arg(path);
            c
        }
        None => Command::new(path),
    };
    let mut child = cmd
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Nothing the running agent was told may change what the candidate prints.
        .env_remove("DOCKER_CTL_CONFIG")
        .spawn()
        .map_err(|e| format!("it cannot be started: {e}"))?;
    // Output is read after the candidate exited: `--version` prints one line, far below
    // the pipe's buffer; a candidate that fills it blocks, and is killed at the deadline.
    let deadline = Instant::now() + VERSION_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let mut out = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = stdout.take(MAX_OUTPUT as u64).read_to_end(&mut out);
    }
    let Some(status) = status else {
        return Err(format!(
            "`--version` did not finish within {}s",
            VERSION_TIMEOUT.as_secs()
        ));
    };
    let text = String::from_utf8_lossy(&out);
    let line = text.lines().next().unwrap_or("").trim();
    if !status.success() {
        return Err(format!("`--version` exited with {status}"));
    }
    let want = format!("docker-ctl-agent {version}");
    if line != want {
        return Err(format!("`--version` printed {line:?}, expected {want:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(class: u8, data: u8, kind: u16, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = class;
        h[5] = data;
        let (k, m) = if data == 1 {
            (kind.to_le_bytes(), machine.to_le_bytes())
        } else {
            (kind.to_be_bytes(), machine.to_be_bytes())
        };
        h[16..18].copy_from_slice(&k);
        h[18..20].copy_from_slice(&m);
        h
    }

    #[test]
    fn the_elf_header_must_be_this_machines() {
        const { assert!(MACHINE != 0, "a known architecture") };
        elf_header(&header(CLASS, DATA, 2, MACHINE)).unwrap();
        elf_header(&header(CLASS, DATA, 3, MACHINE)).unwrap();
        let other = if MACHINE == 62 { 183 } else { 62 };
        let e = elf_header(&header(CLASS, DATA, 2, other)).unwrap_err();
        assert!(e.contains("machine"), "{e}");
        assert!(elf_header(&header(3 - CLASS, DATA, 2, MACHINE))
            .unwrap_err()
            .contains("class"));
        assert!(elf_header(&header(CLASS, 3 - DATA, 2, MACHINE))
            .unwrap_err()
            .contains("byte order"));
        assert!(elf_header(&header(CLASS, DATA, 1, MACHINE))
            .unwrap_err()
            .contains("type"));
        assert!(elf_header(b"#!/bin/sh\nexit 0\n")
            .unwrap_err()
            .contains("not an ELF"));
        assert!(elf_header(b"").is_err());
    }

    #[test]
    fn this_test_binary_is_an_elf_for_this_machine() {
        elf_file(&std::env::current_exe().unwrap()).unwrap();
    }

    #[test]
    fn version_output_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake");
        std::fs::write(&script, "#!/bin/sh\necho \"docker-ctl-agent 9.9.9\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        version_output(&[], &script, "9.9.9").unwrap();
        let e = version_output(&[], &script, "1.0.0").unwrap_err();
        assert!(e.contains("9.9.9") && e.contains("1.0.0"), "{e}");
        let sh = ["/bin/sh".to_string()];
        version_output(&sh, &script, "9.9.9").unwrap();
        std::fs::write(&script, "#!/bin/sh\nexit 3\n").unwrap();
        assert!(version_output(&[], &script, "9.9.9")
            .unwrap_err()
            .contains("exited"));
        let e = version_output(&[], &dir.path().join("missing"), "1").unwrap_err();
        assert!(e.contains("cannot be started"), "{e}");
    }
}
