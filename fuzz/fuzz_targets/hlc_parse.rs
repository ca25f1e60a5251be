//! Fuzz target `hlc_parse`: the body is `strata_fuzzing::hlc_parse`; fuzz/README.md
//! says what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strata_fuzzing::hlc_parse(data));
