/*
 * tests/fuzz/fuzz.h: shared by the libFuzzer targets in tests/fuzz/. Each
 * target is one fuzz-<name>.c defining LLVMFuzzerTestOneInput; it is linked
 * with libFuzzer (make fuzz, clang) or with replay.c (make check, gcc).
 */
#ifndef NIXOCI_FUZZ_H
#define NIXOCI_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The parsers log one line per rejected input. Fuzzing wants them quiet
 * (millions of inputs) but the replay keeps them, so that formatting of
 * hostile names in log lines is exercised too: NIXOCI_FUZZ_QUIET=1. */
void fuzz_init_log(void);

/* Walks every accessor of an accepted TOC (the lazy reader trusts it);
 * traps on an inconsistency. */
struct nx_toc;
void fuzz_walk_toc(const struct nx_toc *toc);

/* Traps unless @a and @b hold the same dev.nixoci.elf record (both NULL is
 * the same): files, entries, search indices, rpath flags, names, search
 * strings. The mount trusts a record that parsed, so whatever the pusher
 * writes must read back as what it meant. */
struct nx_elf_needs;
void fuzz_elf_needs_same(const struct nx_elf_needs *a, const struct nx_elf_needs *b);

#endif
