// This file only gives the crate a library target, so that netwarp's build.rs
// can name it as a build-dependency; the programs live in main.rs.
#![no_std]
