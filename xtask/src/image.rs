//! What QEMU and Xen load: the x86_64 ELF as it is (a multiboot module that
//! Xen boots through its PVH note), or a flat arm64 `Image` made from the
//! aarch64 ELF.

use anyhow::{bail, ensure, Context, Result};
use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::Endianness;

/// Images are loaded 16 MiB apart (dom0 at 0x49000000, a domU at 0x4a000000).
pub const MAX_IMAGE: u64 = 16 << 20;

/// Offset and value of the arm64 Image header's magic.
const ARM64_MAGIC_OFFSET: usize = 56;
const ARM64_MAGIC: &[u8; 4] = b"ARM\x64";

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point Xen needs.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

fn parse(elf_bytes: &[u8]) -> Result<ElfFile64<'_, Endianness>> {
    ElfFile64::parse(elf_bytes).context("the agent is not a 64-bit ELF file")
}

/// Check that an x86_64 agent ELF is one Xen can start as a PVH dom0.
pub fn check_x86_64(elf_bytes: &[u8]) -> Result<()> {
    let file = parse(elf_bytes)?;
    let (hdr, e) = (file.elf_header(), file.endian());
    ensure!(
        hdr.e_machine(e) == elf::EM_X86_64,
        "the agent ELF is not for x86_64 (e_machine {})",
        hdr.e_machine(e)
    );
    let mut found = false;
    for ph in file.elf_program_headers() {
        if let Some(mut notes) = ph.notes(e, elf_bytes).context("reading ELF notes")? {
            while let Some(note) = notes.next().context("reading an ELF note")? {
                if note.name() == b"Xen" && note.n_type(e) == XEN_ELFNOTE_PHYS32_ENTRY {
                    found = true;
                }
            }
        }
    }
    ensure!(
        found,
        "the agent ELF has no Xen PHYS32_ENTRY note (type 18) in a PT_NOTE segment: \
         Xen cannot boot it as a PVH guest"
    );
    Ok(())
}

/// Flatten an aarch64 agent ELF into an arm64 `Image`: every PT_LOAD
/// segment's file bytes at `p_vaddr - lowest p_vaddr`, zero-filled up to the
/// highest `p_vaddr + p_memsz`, so that .bss (and the boot stack) lie inside
/// the file (Xen puts the device tree right after the file's end, rounded up
/// to 2 MiB).
pub fn arm64_image(elf_bytes: &[u8]) -> Result<Vec<u8>> {
    let file = parse(elf_bytes)?;
    let (hdr, e) = (file.elf_header(), file.endian());
    ensure!(
        hdr.e_machine(e) == elf::EM_AARCH64,
        "the agent ELF is not for aarch64 (e_machine {})",
        hdr.e_machine(e)
    );
    let loads: Vec<_> = file
        .elf_program_headers()
        .iter()
        .filter(|ph| ph.p_type(e) == elf::PT_LOAD && ph.p_memsz(e) > 0)
        .collect();
    ensure!(!loads.is_empty(), "the agent ELF has no PT_LOAD segment");
    let base = loads.iter().map(|ph| ph.p_vaddr(e)).min().unwrap_or(0);
    let mut end = 0u64;
    for ph in &loads {
        let (va, mem, filesz) = (ph.p_vaddr(e), ph.p_memsz(e), ph.p_filesz(e));
        ensure!(
            filesz <= mem,
            "PT_LOAD at {va:#x}: p_filesz {filesz:#x} > p_memsz {mem:#x}"
        );
        let seg_end = va
            .checked_add(mem)
            .context("a PT_LOAD segment wraps around")?;
        end = end.max(seg_end);
    }
    let size = end - base;
    ensure!(
        size < MAX_IMAGE,
        "the agent image would be {size:#x} bytes ({} KiB); it must stay below 16 MiB",
        size >> 10
    );
    let mut image = vec![0u8; size as usize];
    for ph in &loads {
        let data = ph
            .data(e, elf_bytes)
            .map_err(|()| anyhow::anyhow!("a PT_LOAD segment lies outside the ELF file"))?;
        let at = (ph.p_vaddr(e) - base) as usize;
        image[at..at + data.len()].copy_from_slice(data);
    }
    check_arm64_magic(&image)
        .context("the agent's lowest PT_LOAD segment must start with the arm64 Image header")?;
    Ok(image)
}

/// The span `[lowest p_vaddr, highest p_vaddr + p_memsz)` of the ELF's
/// PT_LOAD segments (`.bss` included): the memory the loaded image takes.
pub fn load_span(elf_bytes: &[u8]) -> Result<(u64, u64)> {
    let file = parse(elf_bytes)?;
    let e = file.endian();
    let mut span: Option<(u64, u64)> = None;
    for ph in file.elf_program_headers() {
        if ph.p_type(e) != elf::PT_LOAD || ph.p_memsz(e) == 0 {
            continue;
        }
        let va = ph.p_vaddr(e);
        let end = va
            .checked_add(ph.p_memsz(e))
            .context("a PT_LOAD segment wraps around")?;
        span = Some(span.map_or((va, end), |(lo, hi)| (lo.min(va), hi.max(end))));
    }
    span.context("the agent ELF has no PT_LOAD segment")
}

/// Check the arm64 Image header's magic.
pub fn check_arm64_magic(image: &[u8]) -> Result<()> {
    match image.get(ARM64_MAGIC_OFFSET..ARM64_MAGIC_OFFSET + 4) {
        Some(m) if m == ARM64_MAGIC => Ok(()),
        Some(m) => bail!("no arm64 Image header: bytes 56..60 are {m:02x?}, not \"ARM\\x64\""),
        None => bail!(
            "the image is only {} bytes: no arm64 Image header",
            image.len()
        ),
    }
}

/// The flat arm64 `Image` Xen loads (the agent's and the stub's): the
/// segments' file bytes from address 0, without `.bss` (the header's
/// `image_size` covers it; each entry checks that the device tree is not
/// there before zeroing it).
pub fn arm64_file_image(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut img = arm64_image(bytes)?;
    let file = parse(bytes)?;
    let e = file.endian();
    let file_end = file
        .elf_program_headers()
        .iter()
        .filter(|ph| ph.p_type(e) == elf::PT_LOAD)
        .map(|ph| ph.p_vaddr(e) + ph.p_filesz(e))
        .max()
        .unwrap_or(0);
    img.truncate(file_end as usize);
    check_arm64_magic(&img)?;
    Ok(img)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One segment of a synthetic ELF: (p_type, p_vaddr, file bytes, p_memsz).
    pub(crate) type Seg<'a> = (u32, u64, &'a [u8], u64);

    /// A hand-made little-endian ELF64 executable with the given segments
    /// (no sections).
    pub(crate) fn elf64(machine: u16, segs: &[Seg<'_>]) -> Vec<u8> {
        let phoff = 64u64;
        let mut data_off = phoff + 56 * segs.len() as u64;
        let mut out = Vec::new();
        out.extend_from_slice(b"\x7fELF\x02\x01\x01\0");
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&elf::ET_EXEC.to_le_bytes());
        out.extend_from_slice(&machine.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&segs.first().map_or(0, |s| s.1).to_le_bytes()); // entry
        out.extend_from_slice(&phoff.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // shoff
        out.extend_from_slice(&0u32.to_le_bytes()); // flags
        out.extend_from_slice(&64u16.to_le_bytes()); // ehsize
        out.extend_from_slice(&56u16.to_le_bytes()); // phentsize
        out.extend_from_slice(&(segs.len() as u16).to_le_bytes());
        out.extend_from_slice(&64u16.to_le_bytes()); // shentsize
        out.extend_from_slice(&0u16.to_le_bytes()); // shnum
        out.extend_from_slice(&0u16.to_le_bytes()); // shstrndx
        for (ty, va, bytes, mem) in segs {
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(elf::PF_R | elf::PF_W).to_le_bytes());
            out.extend_from_slice(&data_off.to_le_bytes());
            out.extend_from_slice(&va.to_le_bytes());
            out.extend_from_slice(&va.to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(&mem.to_le_bytes());
            let align: u64 = if *ty == elf::PT_NOTE { 4 } else { 8 };
            out.extend_from_slice(&align.to_le_bytes());
            data_off += bytes.len() as u64;
        }
        for (_, _, bytes, _) in segs {
            out.extend_from_slice(bytes);
        }
        out
    }

    #[test]
    fn load_span_takes_every_loaded_segment_with_its_bss() {
        let elf = elf64(
            elf::EM_X86_64,
            &[
                (elf::PT_LOAD, 0x100000, &[0x90; 16], 16),
                (elf::PT_NOTE, 0x900000, &[0; 4], 4),
                (elf::PT_LOAD, 0x102000, &[1; 8], 0x3000),
                (elf::PT_LOAD, 0x50000, &[], 0),
            ],
        );
        assert_eq!(load_span(&elf).unwrap(), (0x100000, 0x105000));
        let none = elf64(elf::EM_X86_64, &[(elf::PT_NOTE, 0, &[0; 4], 4)]);
        assert!(load_span(&none).is_err());
        assert!(load_span(b"not an elf").is_err());
    }

    fn header() -> Vec<u8> {
        let mut h = vec![0xaa; 64];
        h[56..60].copy_from_slice(b"ARM\x64");
        h
    }

    #[test]
    fn flattens_segments_and_bss() {
        let text = header();
        let data = [1u8, 2, 3, 4];
        let elf = elf64(
            elf::EM_AARCH64,
            &[
                (elf::PT_LOAD, 0x1000, &text, 64),
                // .data with .bss after it.
                (elf::PT_LOAD, 0x3000, &data, 0x100),
                (elf::PT_GNU_STACK, 0, &[], 0),
            ],
        );
        let img = arm64_image(&elf).unwrap();
        assert_eq!(img.len(), 0x2100);
        assert_eq!(&img[..64], &text[..]);
        assert!(img[64..0x2000].iter().all(|&b| b == 0));
        assert_eq!(&img[0x2000..0x2004], &data);
        assert!(img[0x2004..].iter().all(|&b| b == 0));
    }

    #[test]
    fn segments_in_any_order() {
        let text = header();
        let elf = elf64(
            elf::EM_AARCH64,
            &[
                (elf::PT_LOAD, 0x2000, &[9, 9], 2),
                (elf::PT_LOAD, 0x0, &text, 64),
            ],
        );
        let img = arm64_image(&elf).unwrap();
        assert_eq!(img.len(), 0x2002);
        assert_eq!(&img[0x2000..], &[9, 9]);
    }

    #[test]
    fn rejects_bad_inputs() {
        let no_magic = elf64(elf::EM_AARCH64, &[(elf::PT_LOAD, 0, &[0; 64], 64)]);
        let e = format!("{:#}", arm64_image(&no_magic).unwrap_err());
        assert!(e.contains("ARM") && e.contains("PT_LOAD"), "{e}");

        let tiny = elf64(elf::EM_AARCH64, &[(elf::PT_LOAD, 0, &[0; 8], 8)]);
        assert!(arm64_image(&tiny).is_err());

        let h = header();
        let huge = elf64(elf::EM_AARCH64, &[(elf::PT_LOAD, 0, &h, MAX_IMAGE)]);
        let e = arm64_image(&huge).unwrap_err().to_string();
        assert!(e.contains("16 MiB"), "{e}");

        let wrong_arch = elf64(elf::EM_X86_64, &[(elf::PT_LOAD, 0, &h, 64)]);
        assert!(arm64_image(&wrong_arch).is_err());

        let none = elf64(elf::EM_AARCH64, &[]);
        assert!(arm64_image(&none).is_err());

        assert!(arm64_image(b"garbage").is_err());
        assert!(arm64_image(&[]).is_err());
    }

    #[test]
    fn x86_64_needs_the_pvh_note() {
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes()); // namesz
        note.extend_from_slice(&4u32.to_le_bytes()); // descsz
        note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&0x100000u32.to_le_bytes());
        let good = elf64(
            elf::EM_X86_64,
            &[
                (elf::PT_LOAD, 0x100000, &[0x90; 16], 16),
                (elf::PT_NOTE, 0, &note, note.len() as u64),
            ],
        );
        check_x86_64(&good).unwrap();

        let bare = elf64(elf::EM_X86_64, &[(elf::PT_LOAD, 0x100000, &[0x90; 16], 16)]);
        let e = check_x86_64(&bare).unwrap_err().to_string();
        assert!(e.contains("PHYS32_ENTRY"), "{e}");

        let arm = elf64(elf::EM_AARCH64, &[(elf::PT_NOTE, 0, &note, 20)]);
        assert!(check_x86_64(&arm).is_err());
    }
}
