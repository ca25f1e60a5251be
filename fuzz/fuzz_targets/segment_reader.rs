//! Fuzz target `segment_reader`: the body is `strata_fuzzing::segment_reader`; fuzz/README.md
//! says what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strata_fuzzing::segment_reader(data));
