/* SPDX-License-Identifier: Apache-2.0 */
/* A backend module is checked before dlopen: glibc maps a shared object's
 * PT_LOAD segments as the program headers describe them, so a file cut
 * short (an interrupted install) maps pages past its end, and the first
 * touch of one of them (relocation, or the loader reading .dynamic) is a
 * SIGBUS inside dlopen that kills the process. da_elf_check reads the
 * headers from an open descriptor (pread only, nothing mapped) and refuses
 * a file whose header, program header table, section header table or any
 * segment's file range does not lie inside the file, or that was not built
 * as a shared object for this host (ELF class, byte order, machine). It
 * does not replace dlopen's own checks (symbols, versions, alignment); it
 * only keeps dlopen from reading past the end of the file. */
#include <elf.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "da_internal.h"

#if UINTPTR_MAX > 0xffffffffu
#define HOST_CLASS ELFCLASS64
typedef Elf64_Ehdr ehdr_t;
typedef Elf64_Phdr phdr_t;
typedef Elf64_Shdr shdr_t;
#else
#define HOST_CLASS ELFCLASS32
typedef Elf32_Ehdr ehdr_t;
typedef Elf32_Phdr phdr_t;
typedef Elf32_Shdr shdr_t;
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define HOST_DATA ELFDATA2MSB
#else
#define HOST_DATA ELFDATA2LSB
#endif

/* The host's e_machine; 0 (EM_NONE) on an architecture not listed here,
 * where the machine is left to dlopen to check. */
#if defined(__x86_64__)
#define HOST_MACHINE EM_X86_64
#elif defined(__i386__)
#define HOST_MACHINE EM_386
#elif defined(__aarch64__)
#define HOST_MACHINE EM_AARCH64
#elif defined(__arm__)
#define HOST_MACHINE EM_ARM
#elif defined(__powerpc64__)
#define HOST_MACHINE EM_PPC64
#elif defined(__powerpc__)
#define HOST_MACHINE EM_PPC
#elif defined(__s390__)
#define HOST_MACHINE EM_S390
#elif defined(__riscv)
#define HOST_MACHINE EM_RISCV
#elif defined(__mips__)
#define HOST_MACHINE EM_MIPS
#elif defined(__loongarch__) && defined(EM_LOONGARCH)
#define HOST_MACHINE EM_LOONGARCH
#elif defined(__sparc__) && defined(__arch64__)
#define HOST_MACHINE EM_SPARCV9
#else
#define HOST_MACHINE EM_NONE
#endif

static const char *machine_name(unsigned m) {
  switch (m) {
  case EM_X86_64: return "x86-64";
  case EM_386: return "i386";
  case EM_AARCH64: return "AArch64";
  case EM_ARM: return "ARM";
  case EM_PPC64: return "PowerPC64";
  case EM_PPC: return "PowerPC";
  case EM_S390: return "S/390";
  case EM_RISCV: return "RISC-V";
  case EM_MIPS: return "MIPS";
  case EM_SPARCV9: return "SPARC V9";
#ifdef EM_LOONGARCH
  case EM_LOONGARCH: return "LoongArch";
#endif
  }
  return "unknown";
}

/* n with thousands separators: 74112 -> "74,112". */
static const char *grouped(uint64_t n, char buf[32]) {
  char tmp[32];
  int len = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)n);
  int o = 0;
  for (int i = 0; i < len; i++) {
    if (i > 0 && (len - i) % 3 == 0) buf[o++] = ',';
    buf[o++] = tmp[i];
  }
  buf[o] = '\0';
  return buf;
}

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int refuse(char *why, size_t len, const char *fmt, ...) {
  if (why && len) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, len, fmt, ap);
    va_end(ap);
  }
  return -1;
}

/* Reads exactly n bytes at off; 0 on success. */
static int read_at(int fd, void *buf, size_t n, uint64_t off) {
  char *p = buf;
  while (n > 0) {
    if (off > (uint64_t)INT64_MAX) return -1;
    ssize_t r = pread(fd, p, n, (off_t)off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

/* The end of the table of n entries of size es at off, or 0 with *ovf set
 * when it does not fit in 64 bits. */
static uint64_t table_end(uint64_t off, uint64_t n, uint64_t es, int *ovf) {
  *ovf = 0;
  if (es != 0 && n > UINT64_MAX / es) {
    *ovf = 1;
    return 0;
  }
  if (off > UINT64_MAX - n * es) {
    *ovf = 1;
    return 0;
  }
  return off + n * es;
}

static const char *segment_type(uint32_t t) {
  switch (t) {
  case PT_LOAD: return "PT_LOAD";
  case PT_DYNAMIC: return "PT_DYNAMIC";
  case PT_INTERP: return "PT_INTERP";
  case PT_NOTE: return "PT_NOTE";
  case PT_PHDR: return "PT_PHDR";
  case PT_TLS: return "PT_TLS";
  case PT_GNU_EH_FRAME: return "PT_GNU_EH_FRAME";
  case PT_GNU_RELRO: return "PT_GNU_RELRO";
  }
  return "program header";
}

int da_elf_check(int fd, char *why, size_t len) {
  char b1[32], b2[32];
  struct stat st;
  if (why && len) why[0] = '\0';
  if (fstat(fd, &st) != 0) return refuse(why, len, "cannot stat: %s", strerror(errno));
  if (!S_ISREG(st.st_mode)) return refuse(why, len, "not a regular file");
  if (st.st_size < 0) return refuse(why, len, "negative file size");
  const uint64_t size = (uint64_t)st.st_size;

  /* The identification: magic first, so a text file is "not ELF" rather
   * than "truncated", and a cut-off magic is still recognised. */
  unsigned char ident[EI_NIDENT];
  size_t have = size < EI_NIDENT ? (size_t)size : EI_NIDENT;
  if (size == 0) return refuse(why, len, "truncated: the file is empty (0 bytes)");
  if (read_at(fd, ident, have, 0) != 0) return refuse(why, len, "cannot read the ELF header");
  static const unsigned char magic[SELFMAG] = {ELFMAG0, ELFMAG1, ELFMAG2, ELFMAG3};
  if (memcmp(ident, magic, have < SELFMAG ? have : SELFMAG) != 0)
    return refuse(why, len, "not an ELF file (no ELF magic number)");
  if (size < sizeof(ehdr_t))
    return refuse(why, len, "truncated: the ELF header needs %zu bytes, the file has %s",
                  sizeof(ehdr_t), grouped(size, b1));
  if (ident[EI_CLASS] != HOST_CLASS)
    return refuse(why, len, "wrong ELF class: %s, this library is %d-bit",
                  ident[EI_CLASS] == ELFCLASS32   ? "32-bit"
                  : ident[EI_CLASS] == ELFCLASS64 ? "64-bit"
                                                  : "invalid class",
                  HOST_CLASS == ELFCLASS64 ? 64 : 32);
  if (ident[EI_DATA] != HOST_DATA)
    return refuse(why, len, "wrong ELF byte order: %s, this host is %s",
                  ident[EI_DATA] == ELFDATA2LSB   ? "little-endian"
                  : ident[EI_DATA] == ELFDATA2MSB ? "big-endian"
                                                  : "invalid encoding",
                  HOST_DATA == ELFDATA2LSB ? "little-endian" : "big-endian");
  if (ident[EI_VERSION] != EV_CURRENT)
    return refuse(why, len, "unknown ELF version %u", (unsigned)ident[EI_VERSION]);

  /* Class and byte order are the host's: the header reads as a struct. */
  ehdr_t eh;
  if (read_at(fd, &eh, sizeof eh, 0) != 0) return refuse(why, len, "cannot read the ELF header");
  if (eh.e_type != ET_DYN)
    return refuse(why, len, "not a shared object (ELF type %u: %s)", (unsigned)eh.e_type,
                  eh.e_type == ET_REL    ? "relocatable object"
                  : eh.e_type == ET_EXEC ? "executable"
                  : eh.e_type == ET_CORE ? "core dump"
                                         : "unknown");
  if (HOST_MACHINE != EM_NONE && eh.e_machine != HOST_MACHINE)
    return refuse(why, len, "built for another machine: %s (e_machine %u), this host is %s",
                  machine_name(eh.e_machine), (unsigned)eh.e_machine, machine_name(HOST_MACHINE));
  if (eh.e_version != EV_CURRENT)
    return refuse(why, len, "unknown ELF version %lu", (unsigned long)eh.e_version);
  if (eh.e_ehsize != sizeof(ehdr_t))
    return refuse(why, len, "bad ELF header size %u, expected %zu", (unsigned)eh.e_ehsize,
                  sizeof(ehdr_t));

  /* The program header table. With e_phnum PN_XNUM the count is in
   * section 0's sh_info. */
  int ovf;
  if (eh.e_phoff == 0 || eh.e_phnum == 0) return refuse(why, len, "no program headers");
  if (eh.e_phentsize != sizeof(phdr_t))
    return refuse(why, len, "bad program header entry size %u, expected %zu",
                  (unsigned)eh.e_phentsize, sizeof(phdr_t));
  uint64_t phnum = eh.e_phnum;
  if (phnum == PN_XNUM) {
    shdr_t s0;
    if (eh.e_shoff == 0 || eh.e_shoff > size || size - eh.e_shoff < sizeof s0 ||
        read_at(fd, &s0, sizeof s0, eh.e_shoff) != 0)
      return refuse(why, len, "program header count PN_XNUM without a section 0 in the file");
    phnum = s0.sh_info;
  }
  uint64_t phend = table_end(eh.e_phoff, phnum, sizeof(phdr_t), &ovf);
  if (ovf) return refuse(why, len, "program header table size overflows");
  if (phend > size)
    return refuse(why, len, "truncated: program header table ends at byte %s, the file has %s",
                  grouped(phend, b1), grouped(size, b2));

  /* Every segment's file range, read a few headers at a time. PT_LOAD
   * segments are numbered from 1 in the order of the table, as they are
   * what dlopen maps. */
  phdr_t ph[16];
  unsigned nload = 0;
  for (uint64_t i = 0; i < phnum;) {
    uint64_t n = phnum - i < 16 ? phnum - i : 16;
    if (read_at(fd, ph, (size_t)n * sizeof(phdr_t), eh.e_phoff + i * sizeof(phdr_t)) != 0)
      return refuse(why, len, "cannot read the program headers");
    for (uint64_t j = 0; j < n; j++, i++) {
      const phdr_t *p = &ph[j];
      if (p->p_type == PT_NULL) continue;
      char what[64];
      if (p->p_type == PT_LOAD) {
        nload++;
        snprintf(what, sizeof what, "PT_LOAD segment %u", nload);
        if (p->p_filesz > p->p_memsz)
          return refuse(why, len, "%s has a file size (%s) larger than its memory size (%s)", what,
                        grouped(p->p_filesz, b1), grouped(p->p_memsz, b2));
      } else {
        snprintf(what, sizeof what, "%s (program header %llu)", segment_type(p->p_type),
                 (unsigned long long)i);
      }
      if (p->p_filesz == 0) continue;
      uint64_t end = table_end(p->p_offset, 1, p->p_filesz, &ovf);
      if (ovf) return refuse(why, len, "%s: offset + size overflows", what);
      if (end > size)
        return refuse(why, len, "truncated: %s ends at byte %s, the file has %s", what,
                      grouped(end, b1), grouped(size, b2));
    }
  }
  if (nload == 0) return refuse(why, len, "no PT_LOAD segment");

  /* The section header table, if any (dlopen does not read it, but a
   * table past the end is a file cut short). With e_shnum 0 and e_shoff
   * set, the count is in section 0's sh_size. */
  if (eh.e_shoff != 0) {
    if (eh.e_shentsize != sizeof(shdr_t))
      return refuse(why, len, "bad section header entry size %u, expected %zu",
                    (unsigned)eh.e_shentsize, sizeof(shdr_t));
    uint64_t shnum = eh.e_shnum;
    uint64_t end = table_end(eh.e_shoff, 1, sizeof(shdr_t), &ovf);
    if (ovf) return refuse(why, len, "section header table offset overflows");
    if (shnum == 0) {
      if (end > size)
        return refuse(why, len, "truncated: section header table ends at byte %s, the file has %s",
                      grouped(end, b1), grouped(size, b2));
      shdr_t s0;
      if (read_at(fd, &s0, sizeof s0, eh.e_shoff) != 0)
        return refuse(why, len, "cannot read section header 0");
      shnum = s0.sh_size;
    }
    end = table_end(eh.e_shoff, shnum, sizeof(shdr_t), &ovf);
    if (ovf) return refuse(why, len, "section header table size overflows");
    if (end > size)
      return refuse(why, len, "truncated: section header table ends at byte %s, the file has %s",
                    grouped(end, b1), grouped(size, b2));
    if (eh.e_shstrndx != SHN_UNDEF && eh.e_shstrndx != SHN_XINDEX && eh.e_shstrndx >= shnum)
      return refuse(why, len, "section name table index %u out of range (%llu sections)",
                    (unsigned)eh.e_shstrndx, (unsigned long long)shnum);
  }
  return 0;
}
