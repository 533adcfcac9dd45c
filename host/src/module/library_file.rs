//! Sanity checks on a library file's bytes before the dynamic loader sees them.
//!
//! The dynamic loader trusts file headers: a truncated ELF whose segments point past the
//! end of the file is mapped anyway and the process dies of SIGBUS on first touch. These
//! checks refuse such files (and empty, text or random files) with a clear message.

/// Why the bytes are not a usable shared library.
pub fn check(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    if bytes.starts_with(b"\x7fELF") {
        return check_elf(bytes);
    }
    let head = &bytes[..bytes.len().min(4)];
    let macho = matches!(
        head,
        [0xcf, 0xfa, 0xed, 0xfe] | [0xfe, 0xed, 0xfa, 0xcf] | [0xca, 0xfe, 0xba, 0xbe]
    );
    if macho || head.starts_with(b"MZ") {
        return Ok(());
    }
    let sample = &bytes[..bytes.len().min(512)];
    if sample
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        Err("it looks like a text file, not a shared library".into())
    } else {
        Err("it has no shared-library header".into())
    }
}

fn check_elf(b: &[u8]) -> Result<(), String> {
    let truncated = |what: &str| {
        Err(format!(
            "truncated or corrupt ELF file ({what} lies past the end of the {}-byte file)",
            b.len()
        ))
    };
    let wide = match b.get(4) {
        Some(1) => false,
        Some(2) => true,
        _ => return Err("corrupt ELF header (unknown class)".into()),
    };
    let little = match b.get(5) {
        Some(1) => true,
        Some(2) => false,
        _ => return Err("corrupt ELF header (unknown byte order)".into()),
    };
    let rd = |off: usize, len: usize| -> Option<u64> {
        let s = b.get(off..off.checked_add(len)?)?;
        let mut v: u64 = 0;
        for i in 0..len {
            let byte = if little { s[len - 1 - i] } else { s[i] };
            v = (v << 8) | u64::from(byte);
        }
        Some(v)
    };
    let header_len = if wide { 64 } else { 52 };
    if b.len() < header_len {
        return truncated("the ELF header");
    }
    let e_type = rd(16, 2).unwrap_or(0);
    if e_type != 3 {
        return Err(format!(
            "ELF file is not a shared object (e_type {e_type}); build the plugin as a cdylib"
        ));
    }
    let (phoff, phentsize, phnum, shoff, shentsize, shnum) = if wide {
        (
            rd(32, 8),
            rd(54, 2),
            rd(56, 2),
            rd(40, 8),
            rd(58, 2),
            rd(60, 2),
        )
    } else {
        (
            rd(28, 4),
            rd(42, 2),
            rd(44, 2),
            rd(32, 4),
            rd(46, 2),
            rd(48, 2),
        )
    };
    let (Some(phoff), Some(phentsize), Some(phnum), Some(shoff), Some(shentsize), Some(shnum)) =
        (phoff, phentsize, phnum, shoff, shentsize, shnum)
    else {
        return truncated("the ELF header");
    };
    let len = b.len() as u64;
    let table_end = |off: u64, size: u64, n: u64| off.checked_add(size.checked_mul(n)?);
    if table_end(phoff, phentsize, phnum).is_none_or(|end| end > len) {
        return truncated("the program header table");
    }
    if shnum > 0 && table_end(shoff, shentsize, shnum).is_none_or(|end| end > len) {
        return truncated("the section header table");
    }
    for i in 0..phnum {
        let ph = (phoff + i * phentsize) as usize;
        let (offset, filesz) = if wide {
            (rd(ph + 8, 8), rd(ph + 32, 8))
        } else {
            (rd(ph + 4, 4), rd(ph + 16, 4))
        };
        let (Some(offset), Some(filesz)) = (offset, filesz) else {
            return truncated("a program header");
        };
        if offset.checked_add(filesz).is_none_or(|end| end > len) {
            return truncated("a segment");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn refuses_obvious_non_libraries() {
        assert_eq!(check(b""), Err("the file is empty".into()));
        assert!(check(b"hello world\n").unwrap_err().contains("text file"));
        assert!(check(&[0x00, 0x13, 0xff, 0x80, 0x01])
            .unwrap_err()
            .contains("no shared-library header"));
        assert!(check(b"\x7fELF")
            .unwrap_err()
            .contains("corrupt ELF header"));
        let mut tiny = b"\x7fELF\x02\x01\x01".to_vec();
        tiny.resize(20, 0);
        assert!(check(&tiny).unwrap_err().contains("truncated"));
    }

    /// Builds a small shared library (not a modhost module) with the C compiler.
    #[cfg(target_os = "linux")]
    fn build_c_shared_library(dir: &std::path::Path) -> std::path::PathBuf {
        let src = dir.join("plain.c");
        std::fs::write(
            &src,
            "int plain_answer(void) { return 42; }\nconst char plain_text[] = \"not a module\";\n",
        )
        .unwrap();
        let lib = dir.join("libplain.so");
        let out = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg(&src)
            .output()
            .expect("run the C compiler (cc) to build a test shared library");
        assert!(
            out.status.success(),
            "cc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lib
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn accepts_a_freshly_built_shared_library_and_refuses_a_truncated_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(build_c_shared_library(tmp.path())).unwrap();
        assert!(bytes.starts_with(b"\x7fELF"), "cc built an ELF file");
        assert_eq!(check(&bytes), Ok(()));
        let cut = &bytes[..bytes.len() / 2];
        let err = check(cut).unwrap_err();
        assert!(err.starts_with("truncated or corrupt ELF file"), "{err}");
        // The same bytes with the header's type changed to an executable are refused too.
        let mut exec = bytes.clone();
        let e_type = if bytes[5] == 1 { [2, 0] } else { [0, 2] };
        exec[16..18].copy_from_slice(&e_type);
        assert!(
            check(&exec)
                .unwrap_err()
                .contains("not a shared object (e_type 2)"),
            "{:?}",
            check(&exec)
        );
    }
}
