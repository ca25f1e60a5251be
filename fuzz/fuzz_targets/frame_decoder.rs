//! Fuzz target `frame_decoder`: the body is `strata_fuzzing::frame_decoder`; fuzz/README.md
//! says what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strata_fuzzing::frame_decoder(data));
