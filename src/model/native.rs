//! Native (exponential) histogram buckets of nanosecond values exported in seconds, as
//! Prometheus native histograms and OTLP exponential histograms define them: at schema
//! `s` (K = 2^s buckets per power of two), bucket `i` holds the values `x` seconds with
//! `2^((i-1)/K) < x <= 2^(i/K)`.
//!
//! The bucket of an integer number of nanoseconds is found exactly, with no floating
//! point: within each power of two of nanoseconds the K boundaries fall at the same
//! mantissas, so a value's bucket is its highest set bit times K, plus how many of K
//! fixed thresholds its mantissa (the value shifted to bit 63) exceeds. That is the
//! per-octave table of a few compares the kernel can run too. The kernel's histograms
//! count by it (`KernelHistogram`), durations and sizes in bytes alike, and exporters
//! merge their buckets into any coarser schema (`NativeBuckets`).

use std::borrow::Cow;

use super::ClassicHistogram;

/// The finest schema: 256 buckets per power of two.
pub const MAX_SCHEMA: u8 = 8;

/// `floor(K * log2(1e9))` for each schema (K = 2^schema): the bucket that holds 1 ns
/// is bucket `-OFFSETS[schema]`.
const OFFSETS: [i32; 9] = [29, 59, 119, 239, 478, 956, 1913, 3826, 7653];

/// For each schema, `floor(2^63 * m)` of the mantissas `m` in [1, 2) at which bucket
/// boundaries `1e9 * 2^(i/K)` ns fall within every power of two, in ascending order:
/// the K-th integer root of `1e9^K * 2^(63K + k - OFFSET)`, checked by a test with
/// arbitrary-precision arithmetic.
#[rustfmt::skip]
static THRESHOLDS: [&[u64]; 9] = [
    &[
        0xee6b280000000000,
    ],
    &[
        0xa8965f74bf065071, 0xee6b280000000000,
    ],
    &[
        0x8dc3b8960164a7d9, 0xa8965f74bf065071, 0xc87c3e7d03cdbec3, 0xee6b280000000000,
    ],
    &[
        0x81ffa7a9549ca6e3, 0x8dc3b8960164a7d9, 0x9a9867054d512391, 0xa8965f74bf065071,
        0xb7d88a12d0dd9ea0, 0xc87c3e7d03cdbec3, 0xdaa17c2cd19555db, 0xee6b280000000000,
    ],
    &[
        0x81ffa7a9549ca6e3, 0x87c11235836d16a3, 0x8dc3b8960164a7d9, 0x940a7e28259fb382,
        0x9a9867054d512391, 0xa1709975dfb06757, 0xa8965f74bf065071, 0xb00d2843e1060dc2,
        0xb7d88a12d0dd9ea0, 0xbffc43b7e604a922, 0xc87c3e7d03cdbec3, 0xd15c9000bf211c1f,
        0xdaa17c2cd19555db, 0xe44f7742cb56e3dd, 0xee6b280000000000, 0xf8f969d9b5abf948,
    ],
    &[
        0x81ffa7a9549ca6e3, 0x84d8626d3118d396, 0x87c11235836d16a3, 0x8aba10758e1ea3cf,
        0x8dc3b8960164a7d9, 0x90de67fff600044c, 0x940a7e28259fb382, 0x97485c9a622adb60,
        0x9a9867054d512391, 0x9dfb034651c99c68, 0xa1709975dfb06757, 0xa4f993f3ed7b61ca,
        0xa8965f74bf065071, 0xac476b0df43f745f, 0xb00d2843e1060dc2, 0xb3e80b172fd51af7,
        0xb7d88a12d0dd9ea0, 0xbbdf1e5a373ce5c6, 0xbffc43b7e604a922, 0xc43078ac4ed47ae7,
        0xc87c3e7d03cdbec3, 0xcce019443eb56ce4, 0xd15c9000bf211c1f, 0xd5f22ca6019743e0,
        0xdaa17c2cd19555db, 0xdf6b0ea438793a89, 0xe44f7742cb56e3dd, 0xe94f4c7859ce1066,
        0xee6b280000000000, 0xf3a3a6f29dd0c333, 0xf8f969d9b5abf948, 0xfe6d14c2b5114024,
    ],
    &[
        0x80992abb83a534a2, 0x81ffa7a9549ca6e3, 0x836a0bee9d9d5401, 0x84d8626d3118d396,
        0x864ab625376b7b77, 0x87c11235836d16a3, 0x893b81dbe7ed5966, 0x8aba10758e1ea3cf,
        0x8c3cc97f4cf1aadd, 0x8dc3b8960164a7d9, 0x8f4ee976e7c8b4cc, 0x90de67fff600044c,
        0x9272403036b7aa56, 0x940a7e28259fb382, 0x95a72e2a0ca44f7c, 0x97485c9a622adb60,
        0x98ee16002855a076, 0x9a9867054d512391, 0x9c475c770cade96d, 0x9dfb034651c99c68,
        0x9fb368881b4a8811, 0xa1709975dfb06757, 0xa332a36df2fd8a6a, 0xa4f993f3ed7b61ca,
        0xa6c578b1139d848c, 0xa8965f74bf065071, 0xaa6c5634c8b04b16, 0xac476b0df43f745f,
        0xae27ac445c7dc318, 0xb00d2843e1060dc2, 0xb1f7eda09520aa93, 0xb3e80b172fd51af7,
        0xb5dd8f8d7d341ffd, 0xb7d88a12d0dd9ea0, 0xb9d909e079c5c456, 0xbbdf1e5a373ce5c6,
        0xbdead70eaf3d9b5a, 0xbffc43b7e604a922, 0xc213743bb6f64957, 0xc43078ac4ed47ae7,
        0xc6536148a749ff7d, 0xc87c3e7d03cdbec3, 0xcaab20e36fe24ee5, 0xcce019443eb56ce4,
        0xcf1b38968c2339b8, 0xd15c9000bf211c1f, 0xd3a430d90d943190, 0xd5f22ca6019743e0,
        0xd846951f0034440a, 0xdaa17c2cd19555db, 0xdd02f3ea2ab18362, 0xdf6b0ea438793a89,
        0xe1d9dedb2c86c2b2, 0xe44f7742cb56e3dd, 0xe6cbeac2fc0e04aa, 0xe94f4c7859ce1066,
        0xebd9afb4c6a18262, 0xee6b280000000000, 0xf103c91834f0f723, 0xf3a3a6f29dd0c333,
        0xf64ad5bc15bce751, 0xf8f969d9b5abf948, 0xfbaf77e97135e555, 0xfe6d14c2b5114024,
    ],
    &[
        0x80992abb83a534a2, 0x814becf46d36de50, 0x81ffa7a9549ca6e3, 0x82b45c33a1fc249b,
        0x836a0bee9d9d5401, 0x8420b837728601a6, 0x84d8626d3118d396, 0x85910bf0d1b7f7a3,
        0x864ab625376b7b77, 0x8705626f328b539f, 0x87c11235836d16a3, 0x887dc6e0dd157151,
        0x893b81dbe7ed5966, 0x89fa4493447b03d3, 0x8aba10758e1ea3cf, 0x8b7ae6f35dd2f7f9,
        0x8c3cc97f4cf1aadd, 0x8cffb98df7fb8c27, 0x8dc3b8960164a7d9, 0x8e88c810146440ee,
        0x8f4ee976e7c8b4cc, 0x90161e4740cf4cee, 0x90de67fff600044c, 0x91a7c821f20d45f4,
        0x9272403036b7aa56, 0x933dd1afdfb5b8e4, 0x940a7e28259fb382, 0x94d8472260df7178,
        0x95a72e2a0ca44f7c, 0x967734ccc9db3a92, 0x97485c9a622adb60, 0x981aa724caf3e7c7,
        0x98ee16002855a076, 0x99c2aac2d0368057, 0x9a9867054d512391, 0x9b6f4c6262456c0e,
        0x9c475c770cade96d, 0x9d2098e288398a37, 0x9dfb034651c99c68, 0x9ed69d462a942332,
        0x9fb368881b4a8811, 0xa09166b47744ad34, 0xa1709975dfb06757, 0xa251027946c56529,
        0xa332a36df2fd8a6a, 0xa4157e058251c4f0, 0xa4f993f3ed7b61ca, 0xa5dee6ef8b39e8c1,
        0xa6c578b1139d848c, 0xa7ad4af3a355fdf8, 0xa8965f74bf065071, 0xa980b7f4569cde45,
        0xaa6c5634c8b04b16, 0xab593bfae5e102e9, 0xac476b0df43f745f, 0xad36e537b2b7048d,
        0xae27ac445c7dc318, 0xaf19c202ac88e526, 0xb00d2843e1060dc2, 0xb101e0dbbed96a6e,
        0xb1f7eda09520aa93, 0xb2ef506b40bad885, 0xb3e80b172fd51af7, 0xb4e21f82657c65a1,
        0xb5dd8f8d7d341ffd, 0xb6da5d1bae91c8fa, 0xb7d88a12d0dd9ea0, 0xb8d8185b5eb8508c,
        0xb9d909e079c5c456, 0xbadb608fee5cf2e4, 0xbbdf1e5a373ce5c6, 0xbce445328146dbb2,
        0xbdead70eaf3d9b5a, 0xbef2d5e75d89fbb7, 0xbffc43b7e604a922, 0xc107227e63c52e6c,
        0xc213743bb6f64957, 0xc3213af388af91c0, 0xc43078ac4ed47ae7, 0xc5412f6f4ff8b64a,
        0xc6536148a749ff7d, 0xc7671047487f5899, 0xc87c3e7d03cdbec3, 0xc992edfe89e25e6a,
        0xcaab20e36fe24ee5, 0xcbc4d946336fdd19, 0xcce019443eb56ce4, 0xcdfce2fdec75f913,
        0xcf1b38968c2339b8, 0xd03b1c3465f978a8, 0xd15c9000bf211c1f, 0xd27f9627ddd5ef69,
        0xd3a430d90d943190, 0xd4ca6246a34b721a, 0xd5f22ca6019743e0, 0xd71b922f9cfdce24,
        0xd846951f0034440a, 0xd97337b2d0694aa4, 0xdaa17c2cd19555db, 0xdbd164d1ead1046a,
        0xdd02f3ea2ab18362, 0xde362bc0cbab0174, 0xdf6b0ea438793a89, 0xe0a19ee6108e2417,
        0xe1d9dedb2c86c2b2, 0xe313d0dba2a63176, 0xe44f7742cb56e3dd, 0xe58cd46f45b22aac,
        0xe6cbeac2fc0e04aa, 0xe80cbca3289143eb, 0xe94f4c7859ce1066, 0xea939cae7762d0ca,
        0xebd9afb4c6a18262, 0xed2187fdef3d8902, 0xee6b280000000000, 0xefb6923473829532,
        0xf103c91834f0f723, 0xf252cf2ba4d0df88, 0xf3a3a6f29dd0c333, 0xf4f652f4799d30c2,
        0xf64ad5bc15bce751, 0xf7a131d7d873ae82, 0xf8f969d9b5abf948, 0xfa53805733e75cd8,
        0xfbaf77e97135e555, 0xfd0d532d283451a6, 0xfe6d14c2b5114024, 0xffcebf4e1a9955be,
    ],
    &[
        0x804026622026259b, 0x80992abb83a534a2, 0x80f26cddfc86b3f4, 0x814becf46d36de50,
        0x81a5ab29d5e5e7d3, 0x81ffa7a9549ca6e3, 0x8259e29e25514b70, 0x82b45c33a1fc249b,
        0x830f149542ac74c1, 0x836a0bee9d9d5401, 0x83c5426b674aa13e, 0x8420b837728601a6,
        0x847c6d7eb08beed7, 0x84d8626d3118d396, 0x8534972f227e3735, 0x85910bf0d1b7f7a3,
        0x85edc0deaa819242, 0x864ab625376b7b77, 0x86a7ebf121f08516, 0x8705626f328b539f,
        0x876319cc50cbe265, 0x87c11235836d16a3, 0x881f4bd7f06a618a, 0x887dc6e0dd157151,
        0x88dc837dae2bf159, 0x893b81dbe7ed5966, 0x899ac2292e30cbf6, 0x89fa4493447b03d3,
        0x8a5a09480e1450d0, 0x8aba10758e1ea3cf, 0x8b1a5a49e7abaa17, 0x8b7ae6f35dd2f7f9,
        0x8bdbb6a053c842e5, 0x8c3cc97f4cf1aadd, 0x8c9e1fbeecfe136f, 0x8cffb98df7fb8c27,
        0x8d61971b526dc891, 0x8dc3b8960164a7d9, 0x8e261e2d2a92cc07, 0x8e88c810146440ee,
        0x8eebb66e261532d1, 0x8f4ee976e7c8b4cc, 0x8fb2615a029f970e, 0x90161e4740cf4cee,
        0x907a206e8db8e2db, 0x90de67fff600044c, 0x9142f52ba7a2119c, 0x91a7c821f20d45f4,
        0x920ce1134637ed43, 0x9272403036b7aa56, 0x92d7e5a977d8cd12, 0x933dd1afdfb5b8e4,
        0x93a40474664e5b70, 0x940a7e28259fb382, 0x94713efc59bb6863, 0x94d8472260df7178,
        0x953f96cbbb8dce5f, 0x95a72e2a0ca44f7c, 0x960f0d6f19746f02, 0x967734ccc9db3a92,
        0x96dfa47528594d72, 0x97485c9a622adb60, 0x97b15d6ec75fcc23, 0x981aa724caf3e7c7,
        0x988439ef02e713b0, 0x98ee16002855a076, 0x99583b8b1790a8a3, 0x99c2aac2d0368057,
        0x9a2d63da754b35ed, 0x9a9867054d512391, 0x9b03b476c26191f4, 0x9b6f4c6262456c0e,
        0x9bdb2efbde8e040d, 0x9c475c770cade96d, 0x9cb3d507e611d055, 0x9d2098e288398a37,
        0x9d8da83b34d10fcc, 0x9dfb034651c99c68, 0x9e68aa386972dac2, 0x9ed69d462a942332,
        0x9f44dca46885cb79, 0x9fb368881b4a8811, 0xa02241265fa8df27, 0xa09166b47744ad34,
        0xa100d967c8b8bb54, 0xa1709975dfb06757, 0xa1e0a7146d015daf, 0xa251027946c56529,
        0xa2c1abda68743c96, 0xa332a36df2fd8a6a, 0xa3a3e96a2ce2de55, 0xa4157e058251c4f0,
        0xa4876176853ded7b, 0xa4f993f3ed7b61ca, 0xa56c15b498d8d05d, 0xa5dee6ef8b39e8c1,
        0xa65207dbeeb1ca2e, 0xa6c578b1139d848c, 0xa73939a670beabd8, 0xa7ad4af3a355fdf8,
        0xa821acd06f3e1b13, 0xa8965f74bf065071, 0xa90b6318a40d75f7, 0xa980b7f4569cde45,
        0xa9f65e403603598b, 0xaa6c5634c8b04b16, 0xaae2a00abc4ed1b4, 0xab593bfae5e102e9,
        0xabd02a3e41db390d, 0xac476b0df43f745f, 0xacbefea348b8cf18, 0xad36e537b2b7048d,
        0xadaf1f04cd8a0b6a, 0xae27ac445c7dc318, 0xaea08d304af5b45a, 0xaf19c202ac88e526,
        0xaf934af5bd1dbfd9, 0xb00d2843e1060dc2, 0xb0875a27a51b0517, 0xb101e0dbbed96a6e,
        0xb17cbc9b0c7dc5ab, 0xb1f7eda09520aa93, 0xb273742788d314f4, 0xb2ef506b40bad885,
        0xb36b82a73f2f247d, 0xb3e80b172fd51af7, 0xb464e9f6e7bc7c2f, 0xb4e21f82657c65a1,
        0xb55fabf5d1502524, 0xb5dd8f8d7d341ffd, 0xb65bca85e502ce07, 0xb6da5d1bae91c8fa,
        0xb759478ba9ceefda, 0xb7d88a12d0dd9ea0, 0xb85824ee4833fa2c, 0xb8d8185b5eb8508c,
        0xb95864978dde8da6, 0xb9d909e079c5c456, 0xba5a0873f155cc08, 0xbadb608fee5cf2e4,
        0xbb5d127295adc498, 0xbbdf1e5a373ce5c6, 0xbc6184854e3f0431, 0xbce445328146dbb2,
        0xbd6760a0a2634fff, 0xbdead70eaf3d9b5a, 0xbe6ea8bbd137922e, 0xbef2d5e75d89fbb7,
        0xbf775ed0d562ffaf, 0xbffc43b7e604a922, 0xc08184dc68e37e6a, 0xc107227e63c52e6c,
        0xc18d1cde08df531b, 0xc213743bb6f64957, 0xc29a28d7f97c1e36, 0xc3213af388af91c0,
        0xc3a8aacf49bb2f35, 0xc43078ac4ed47ae7, 0xc4b8a4cbd75b35b9, 0xc5412f6f4ff8b64a,
        0xc5ca18d852bf57f2, 0xc6536148a749ff7d, 0xc6dd090242dbb5d7, 0xc7671047487f5899,
        0xc7f1775a092760a6, 0xc87c3e7d03cdbec3, 0xc90765f2e593ce5b, 0xc992edfe89e25e6a,
        0xca1ed6e2fa89d0a3, 0xcaab20e36fe24ee5, 0xcb37cc4350ec1709, 0xcbc4d946336fdd19,
        0xcc52482fdc1f4407, 0xcce019443eb56ce4, 0xcd6e4cc77e179cbc, 0xcdfce2fdec75f913,
        0xce8bdc2c0b6c5b1b, 0xcf1b38968c2339b8, 0xcfaaf8824f70aa54, 0xd03b1c3465f978a8,
        0xd0cba3f21052556b, 0xd15c9000bf211c1f, 0xd1ede0a6133e2fdf, 0xd27f9627ddd5ef69,
        0xd311b0cc208a4053, 0xd3a430d90d943190, 0xd437169507e5b548, 0xd4ca6246a34b721a,
        0xd55e1434a48eabdd, 0xd5f22ca6019743e0, 0xd686abe1e18dd0ca, 0xd71b922f9cfdce24,
        0xd7b0dfd6bdf7e39a, 0xd846951f0034440a, 0xd8dcb2505135246b, 0xd97337b2d0694aa4,
        0xda0a258ecf4eb45d, 0xdaa17c2cd19555db, 0xdb393bd58d41f0fd, 0xdbd164d1ead1046a,
        0xdc69f76b0559d2f7, 0xdd02f3ea2ab18362, 0xdd9c5a98db8e586f, 0xde362bc0cbab0174,
        0xded067abe1ea0368, 0xdf6b0ea438793a89, 0xe00620f41cf574a5, 0xe0a19ee6108e2417,
        0xe13d88c4c8292b90, 0xe1d9dedb2c86c2b2, 0xe276a1745a65739f, 0xe313d0dba2a63176,
        0xe3b16d5c8a7087e7, 0xe44f7742cb56e3dd, 0xe4edeeda537af560, 0xe58cd46f45b22aac,
        0xe62c284df9aa44a5, 0xe6cbeac2fc0e04aa, 0xe76c1c1b0ea9f3db, 0xe80cbca3289143eb,
        0xe8adcca87642c986, 0xe94f4c7859ce1066, 0xe9f13c606af88922, 0xea939cae7762d0ca,
        0xeb366db082ae1265, 0xebd9afb4c6a18262, 0xec7d6309b34ff407, 0xed2187fdef3d8902,
        0xedc61ee057857b14, 0xee6b280000000000, 0xef10a3ac336847c4, 0xefb6923473829532,
        0xf05cf3e8794270f6, 0xf103c91834f0f723, 0xf1ab1213ce533f59, 0xf252cf2ba4d0df88,
        0xf2fb00b04f9a897e, 0xf3a3a6f29dd0c333, 0xf44cc24396aab9ff, 0xf4f652f4799d30c2,
        0xf5a05956be818907, 0xf64ad5bc15bce751, 0xf6f5c87668677280, 0xf7a131d7d873ae82,
        0xf84d1232c0d5f250, 0xf8f969d9b5abf948, 0xf9a6391f8464900a, 0xfa53805733e75cd8,
        0xfb013fd404bcc38e, 0xfbaf77e97135e555, 0xfc5e28eb2d94bc11, 0xfd0d532d283451a6,
        0xfdbcf70389b1132f, 0xfe6d14c2b5114024, 0xff1dacbf47ed75a0, 0xffcebf4e1a9955be,
    ],
];

/// The thresholds of `schema` (at most `MAX_SCHEMA`): what a kernel program needs to
/// bucket as `bucket` does.
pub fn thresholds(schema: u8) -> &'static [u64] {
    THRESHOLDS[usize::from(schema.min(MAX_SCHEMA))]
}

/// The native bucket of `nanos` at `schema` (at most `MAX_SCHEMA`); None for 0, which
/// belongs in the zero bucket.
pub fn bucket(nanos: u64, schema: u8) -> Option<i32> {
    if nanos == 0 {
        return None;
    }
    let schema = schema.min(MAX_SCHEMA);
    let octave = 63 - nanos.leading_zeros();
    let mantissa = nanos << (63 - octave);
    let above = THRESHOLDS[usize::from(schema)].partition_point(|&t| t < mantissa);
    Some(((octave as i32) << schema) + above as i32 - OFFSETS[usize::from(schema)])
}

/// The native bucket of a kernel bucket index (`bpf/native.h`, at the same schema);
/// None for the zero bucket.
pub fn from_kernel(index: u32, schema: u8) -> Option<i32> {
    let below_one = OFFSETS[usize::from(schema.min(MAX_SCHEMA))];
    index.checked_sub(1).map(|i| i as i32 - below_one)
}

/// The bucket at `schema - by` that holds bucket `index` of `schema`: buckets merge in
/// runs of 2^by, each run ending at a boundary of the coarser schema.
pub fn downscale(index: i32, by: u8) -> i32 {
    ((index - 1) >> by) + 1
}

/// The upper bound, in seconds, of bucket `index` at `schema`.
pub fn upper_bound(index: i32, schema: u8) -> f64 {
    (f64::from(index) / f64::from(1u32 << schema.min(MAX_SCHEMA))).exp2()
}

/// The schema the kernel buckets values at (`bpf/native.h`).
pub const KERNEL_SCHEMA: u8 = super::layout::NATIVE_MAX_SCHEMA;
/// Slots of a kernel histogram (`bpf/histogram.h`): the zero bucket, then one per
/// native bucket at `KERNEL_SCHEMA` from the one that holds 1 (ns or byte) up.
pub const KERNEL_SLOTS: usize = super::layout::HIST_BUCKETS;

/// The zero bucket's threshold as exported: the zero bucket holds exactly the zeros
/// (0 ns, 0 bytes), and any threshold below the smallest other value (1 ns, 1 byte)
/// says so. Prometheus reads a histogram with a positive one as native even before its
/// first observation.
pub const ZERO_THRESHOLD: f64 = 2.938_735_877_055_719e-39; // 2^-128

/// `floor(2^63 * 2^(k/8))` for k in 0..8: the mantissas at which the native boundaries
/// `2^(i/8)` bytes fall within every power of two, at `KERNEL_SCHEMA`.
static BYTES_THRESHOLDS: [u64; 8] = [
    0x8000000000000000,
    0x8b95c1e3ea8bd6e6,
    0x9837f0518db8a96f,
    0xa5fed6a9b15138ea,
    0xb504f333f9de6484,
    0xc5672a115506dadd,
    0xd744fccad69d6af4,
    0xeac0c6e7dd24392e,
];

/// What a kernel histogram counts: durations in nanoseconds, exported in seconds, or
/// sizes in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Unit {
    #[default]
    Nanoseconds,
    Bytes,
}

impl Unit {
    /// The thresholds the kernel is given to count this unit at `KERNEL_SCHEMA`.
    pub fn kernel_thresholds(self) -> &'static [u64] {
        match self {
            Unit::Nanoseconds => thresholds(KERNEL_SCHEMA),
            Unit::Bytes => &BYTES_THRESHOLDS,
        }
    }

    /// Minus the native index of the bucket that holds 1 (ns or byte) at `KERNEL_SCHEMA`.
    fn below_one(self) -> i32 {
        match self {
            Unit::Nanoseconds => OFFSETS[usize::from(KERNEL_SCHEMA)],
            Unit::Bytes => 0,
        }
    }

    /// What one unit is in the exported unit (seconds or bytes).
    fn exported(self) -> f64 {
        match self {
            Unit::Nanoseconds => 1e-9,
            Unit::Bytes => 1.0,
        }
    }
}

/// The kernel's slot of a value (`psc_hist_bucket` of `bpf/histogram.h`, or the http
/// probe's byte buckets): 0 for 0, else `1 + octave * K + thresholds below the
/// mantissa`, the top slot taking everything beyond.
pub fn kernel_slot(unit: Unit, value: u64) -> usize {
    if value == 0 {
        return 0;
    }
    let octave = 63 - value.leading_zeros();
    let mantissa = value << (63 - octave);
    let above = unit.kernel_thresholds().partition_point(|&t| t < mantissa);
    let slot = 1 + ((octave as usize) << KERNEL_SCHEMA) + above;
    slot.min(KERNEL_SLOTS - 1)
}

/// A histogram as the kernel keeps it (`struct psc_hist` and the http probe's slots):
/// counts per slot and the exact sum. Only the run of slots from the first non-empty one
/// to the last is held: a series' values span a few octaves of the 48 the kernel counts,
/// so a histogram takes a few hundred bytes, not three kilobytes.
#[derive(Debug, Clone, Default)]
pub struct KernelHistogram {
    pub unit: Unit,
    /// The slot `counts[0]` is; every slot outside `counts` is empty.
    first: usize,
    counts: Vec<u64>,
    pub sum: u64,
}

impl PartialEq for KernelHistogram {
    fn eq(&self, other: &Self) -> bool {
        let (from, to) = self.span_with(other);
        self.unit == other.unit
            && self.sum == other.sum
            && (from..to).all(|slot| self.slot(slot) == other.slot(slot))
    }
}

impl Eq for KernelHistogram {}

impl KernelHistogram {
    pub fn new(unit: Unit) -> Self {
        KernelHistogram {
            unit,
            ..KernelHistogram::default()
        }
    }

    /// A duration histogram from the kernel's slots and sum.
    pub fn from_parts(slots: &[u64], sum: u64) -> Self {
        KernelHistogram::from_parts_in(Unit::Nanoseconds, slots, sum)
    }

    pub fn from_parts_in(unit: Unit, slots: &[u64], sum: u64) -> Self {
        let slots = &slots[..slots.len().min(KERNEL_SLOTS)];
        let mut hist = KernelHistogram::new(unit);
        if let (Some(first), Some(last)) = (
            slots.iter().position(|c| *c != 0),
            slots.iter().rposition(|c| *c != 0),
        ) {
            hist.first = first;
            hist.counts = slots[first..=last].to_vec();
        }
        hist.sum = sum;
        hist
    }

    /// A histogram the kernel counts over a window of its slots, as the tcp probe does:
    /// `zero` in slot 0 and `window[i]` in slot `first + i` (slots past `KERNEL_SLOTS`
    /// are dropped: no kernel window reaches them).
    pub fn from_window(unit: Unit, zero: u64, first: usize, window: &[u64], sum: u64) -> Self {
        let mut hist = KernelHistogram::new(unit);
        if zero != 0 {
            hist.add(0, zero);
        }
        let reach = window.len().min(KERNEL_SLOTS.saturating_sub(first));
        let window = &window[..reach];
        if let (Some(from), Some(to)) = (
            window.iter().position(|c| *c != 0),
            window.iter().rposition(|c| *c != 0),
        ) {
            for (at, count) in window.iter().enumerate().take(to + 1).skip(from) {
                hist.add(first + at, *count);
            }
        }
        hist.sum = sum;
        hist
    }

    /// The count in `slot`.
    pub fn slot(&self, slot: usize) -> u64 {
        slot.checked_sub(self.first)
            .and_then(|at| self.counts.get(at))
            .copied()
            .unwrap_or(0)
    }

    /// The slots from the first either histogram holds to one past the last.
    fn span_with(&self, other: &KernelHistogram) -> (usize, usize) {
        let end = |h: &KernelHistogram| h.first + h.counts.len();
        let from = match (self.counts.is_empty(), other.counts.is_empty()) {
            (true, true) => 0,
            (true, false) => other.first,
            (false, true) => self.first,
            (false, false) => self.first.min(other.first),
        };
        (from, end(self).max(end(other)))
    }

    /// Adds `n` to `slot` (below `KERNEL_SLOTS`), widening the run held to reach it.
    fn add(&mut self, slot: usize, n: u64) {
        if self.counts.is_empty() {
            self.first = slot;
        } else if slot < self.first {
            let mut widened = vec![0; self.first - slot];
            widened.extend_from_slice(&self.counts);
            self.counts = widened;
            self.first = slot;
        }
        let at = slot - self.first;
        if at >= self.counts.len() {
            self.counts.resize(at + 1, 0);
        }
        self.counts[at] = self.counts[at].wrapping_add(n);
    }

    pub fn record(&mut self, value: u64) {
        self.add(kernel_slot(self.unit, value), 1);
        self.sum = self.sum.wrapping_add(value);
    }

    pub fn merge(&mut self, other: &KernelHistogram) {
        for (at, count) in other.counts.iter().enumerate() {
            if *count != 0 {
                self.add(other.first + at, *count);
            }
        }
        self.sum = self.sum.wrapping_add(other.sum);
    }

    /// What was counted since `before`, an earlier read of the same kernel counters.
    pub fn since(&self, before: &KernelHistogram) -> KernelHistogram {
        let (from, to) = self.span_with(before);
        let slots: Vec<u64> = (from..to)
            .map(|slot| self.slot(slot).wrapping_sub(before.slot(slot)))
            .collect();
        let mut delta = KernelHistogram::new(self.unit);
        for (at, count) in slots.iter().enumerate() {
            if *count != 0 {
                delta.add(from + at, *count);
            }
        }
        delta.sum = self.sum.wrapping_sub(before.sum);
        delta
    }

    pub fn count(&self) -> u64 {
        self.counts
            .iter()
            .fold(0u64, |total, c| total.wrapping_add(*c))
    }

    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|c| *c == 0)
    }

    /// The native buckets at `KERNEL_SCHEMA`, the schema exporters merge from.
    pub fn native(&self) -> NativeBuckets {
        let below_one = self.unit.below_one();
        NativeBuckets {
            schema: KERNEL_SCHEMA as i8,
            zero_count: self.slot(0),
            buckets: self
                .counts
                .iter()
                .enumerate()
                .map(|(at, count)| (self.first + at, *count))
                .filter(|(slot, count)| *slot > 0 && *count > 0)
                .map(|(slot, count)| (slot as i32 - 1 - below_one, count))
                .collect(),
        }
    }

    /// The classic histogram of `bounds` (ascending, in the histogram's unit; exported
    /// as `exported_bounds`), carrying the native buckets too. A slot is counted
    /// under a bound when every value it holds is at most the bound; a slot the bound
    /// falls inside is counted at the next bound up, so a value is never reported
    /// below its bucket, and one above only within a slot's width (under 9.1 %) of it.
    pub fn to_classic(&self, bounds: &[u64], exported_bounds: &[f64]) -> ClassicHistogram {
        let cumulative = bounds
            .iter()
            .map(|&bound| {
                let inside = kernel_slot(self.unit, bound);
                let whole = if kernel_slot(self.unit, bound.saturating_add(1)) != inside {
                    inside + 1
                } else {
                    inside
                };
                let held = whole.saturating_sub(self.first).min(self.counts.len());
                self.counts[..held].iter().sum()
            })
            .collect();
        ClassicHistogram {
            bounds: exported_bounds.to_vec(),
            cumulative,
            count: self.count(),
            sum: self.sum as f64 * self.unit.exported(),
            native: Some(self.native()),
        }
    }
}

/// A native (exponential) histogram's buckets: Prometheus native histograms and OTLP
/// exponential histograms are both made from these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeBuckets {
    pub schema: i8,
    pub zero_count: u64,
    /// (index, count) of the non-empty buckets, by ascending index.
    pub buckets: Vec<(i32, u64)>,
}

impl NativeBuckets {
    /// The same observations at `schema`, when it is coarser; unchanged otherwise, as
    /// nothing finer than what was counted can be told.
    pub fn at_schema(&self, schema: i8) -> Cow<'_, NativeBuckets> {
        if schema >= self.schema {
            return Cow::Borrowed(self);
        }
        let by = (self.schema - schema) as u8;
        let mut buckets: Vec<(i32, u64)> = Vec::with_capacity(self.buckets.len());
        for &(index, count) in &self.buckets {
            let coarse = downscale(index, by);
            match buckets.last_mut() {
                Some((last, total)) if *last == coarse => *total += count,
                _ => buckets.push((coarse, count)),
            }
        }
        Cow::Owned(NativeBuckets {
            schema,
            zero_count: self.zero_count,
            buckets,
        })
    }

    /// Every bucket from the first non-empty one to the last, empty ones as zeros:
    /// (index of the first, counts); None without a non-empty bucket.
    pub fn dense(&self) -> Option<(i32, Vec<u64>)> {
        let (first, _) = *self.buckets.first()?;
        let (last, _) = *self.buckets.last()?;
        let mut counts = vec![0; (last - first) as usize + 1];
        for &(index, count) in &self.buckets {
            counts[(index - first) as usize] = count;
        }
        Some((first, counts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_bigint::BigUint;

    fn billion_to_the(k: u32) -> BigUint {
        BigUint::from(1_000_000_000u32).pow(k)
    }

    /// `floor(1e9 * 2^(i/K))`: the largest whole number of nanoseconds in bucket `i`.
    fn floor_boundary(index: i32, schema: u8) -> u64 {
        let k = 1u32 << schema;
        let power = billion_to_the(k);
        let scaled = if index >= 0 {
            power << index as usize
        } else {
            power >> (-index) as usize
        };
        u64::try_from(scaled.nth_root(k)).expect("fits")
    }

    #[test]
    fn the_tables_are_the_exact_integer_roots() {
        for schema in 0..=MAX_SCHEMA {
            let k = 1u32 << schema;
            let power = billion_to_the(k);
            let offset = power.bits() as i32 - 1;
            assert_eq!(OFFSETS[usize::from(schema)], offset, "schema {schema}");
            let table = thresholds(schema);
            assert_eq!(table.len(), k as usize);
            for (j, &threshold) in table.iter().enumerate() {
                let shift = 63 * k as i32 + j as i32 - offset;
                let exact = (&power << shift as usize).nth_root(k);
                assert_eq!(
                    BigUint::from(threshold),
                    exact,
                    "schema {schema}, threshold {j}"
                );
            }
        }
    }

    #[test]
    fn whole_seconds_and_their_halves_sit_on_boundaries_at_every_schema() {
        // 1e9 * 2^n ns is a whole number for n >= -9: exactly the upper bound of bucket
        // n*K, and one nanosecond more is in the next bucket.
        for schema in 0..=MAX_SCHEMA {
            let k = 1i32 << schema;
            for n in -9i32..=33 {
                let nanos = if n >= 0 {
                    1_000_000_000u64 << n
                } else {
                    1_000_000_000u64 >> (-n)
                };
                assert_eq!(
                    bucket(nanos, schema),
                    Some(n * k),
                    "schema {schema}, 2^{n} s"
                );
                assert_eq!(
                    bucket(nanos + 1, schema),
                    Some(n * k + 1),
                    "schema {schema}, 2^{n} s + 1 ns"
                );
            }
        }
    }

    #[test]
    fn every_boundary_splits_whole_nanoseconds_right_at_every_schema() {
        // Buckets between 1 ns and about 69 s: the largest whole number of nanoseconds of
        // each is in it (or in a lower bucket, where buckets are narrower than a
        // nanosecond), and one more is beyond it.
        for schema in 0..=MAX_SCHEMA {
            let k = 1i32 << schema;
            let offset = OFFSETS[usize::from(schema)];
            for index in (-offset)..=(36 * k - offset) {
                let floor = floor_boundary(index, schema);
                let below = bucket(floor, schema);
                if floor > floor_boundary(index - 1, schema) {
                    assert_eq!(below, Some(index), "schema {schema}, bucket {index}");
                } else {
                    assert!(
                        below.is_none_or(|b| b < index),
                        "schema {schema}, bucket {index}"
                    );
                }
                let beyond = bucket(floor + 1, schema).expect("not zero");
                assert!(
                    beyond > index,
                    "schema {schema}, bucket {index}: {} ns",
                    floor + 1
                );
            }
        }
    }

    #[test]
    fn zero_goes_to_the_zero_bucket_and_the_largest_values_stay_in_range() {
        assert_eq!(bucket(0, 3), None);
        assert_eq!(bucket(1, 0), Some(-29));
        let top = bucket(u64::MAX, MAX_SCHEMA).expect("a bucket");
        assert!(upper_bound(top, MAX_SCHEMA) >= u64::MAX as f64 * 1e-9);
    }

    #[test]
    fn a_coarser_schema_is_the_finer_one_merged() {
        let mut nanos = 1u64;
        while nanos < u64::MAX / 3 {
            for schema in 0..=MAX_SCHEMA {
                let fine = bucket(nanos, MAX_SCHEMA).expect("a bucket");
                let by = MAX_SCHEMA - schema;
                assert_eq!(
                    Some(downscale(fine, by)),
                    bucket(nanos, schema),
                    "{nanos} ns at {schema}"
                );
            }
            nanos = nanos * 3 + 1;
        }
    }

    #[test]
    fn upper_bounds_are_the_seconds_of_the_boundaries() {
        assert_eq!(upper_bound(0, 3), 1.0);
        assert_eq!(upper_bound(8, 3), 2.0);
        assert!((upper_bound(1, 3) - 2f64.powf(0.125)).abs() < 1e-15);
    }

    #[test]
    fn kernel_slots_are_native_buckets_from_one_nanosecond_up() {
        assert_eq!(kernel_slot(Unit::Nanoseconds, 0), 0);
        assert_eq!(kernel_slot(Unit::Nanoseconds, 1), 1);
        let one_second = kernel_slot(Unit::Nanoseconds, 1_000_000_000);
        assert_eq!(
            KernelHistogram::from_parts(&slot_with(one_second), 0)
                .native()
                .buckets,
            vec![(0, 1)]
        );
        assert_eq!(
            kernel_slot(Unit::Nanoseconds, 1_000_000_001),
            one_second + 1
        );
        // Beyond 2^48 ns, everything shares the top slot.
        assert_eq!(kernel_slot(Unit::Nanoseconds, 1 << 48), KERNEL_SLOTS - 1);
        assert_eq!(kernel_slot(Unit::Nanoseconds, u64::MAX), KERNEL_SLOTS - 1);
        assert_eq!(
            kernel_slot(Unit::Nanoseconds, (1 << 48) - 1),
            KERNEL_SLOTS - 1
        );
    }

    fn slot_with(slot: usize) -> Vec<u64> {
        let mut slots = vec![0; KERNEL_SLOTS];
        slots[slot] = 1;
        slots
    }

    #[test]
    fn classic_counts_agree_with_native_buckets_on_their_shared_bounds() {
        // 1 ms, 2 ms and 1 s are native boundaries at schema 0 (powers of two of a
        // second are: 2^-10 s is not 1 ms, so 1 ms straddles a bucket).
        let mut hist = KernelHistogram::default();
        for nanos in [
            0,
            1,
            1_000_000_000,
            1_000_000_001,
            500_000_000,
            2_000_000_000,
        ] {
            hist.record(nanos);
        }
        let bounds = [0, 500_000_000, 1_000_000_000, 2_000_000_000];
        let classic = hist.to_classic(&bounds, &[0.0, 0.5, 1.0, 2.0]);
        assert_eq!(classic.cumulative, vec![1, 3, 4, 6]);
        assert_eq!(classic.count, 6);
        assert!((classic.sum - 4.500_000_002).abs() < 1e-9);
        let native = classic.native.expect("native buckets");
        assert_eq!(native.zero_count, 1);
        assert_eq!(native.schema, KERNEL_SCHEMA as i8);
        let total: u64 = native.buckets.iter().map(|(_, c)| c).sum();
        assert_eq!(total + native.zero_count, 6);
        // At schema 0 the buckets are (2^(i-1), 2^i] seconds.
        let coarse = native.at_schema(0);
        assert_eq!(
            coarse.buckets,
            vec![(bucket(1, 0).expect("1 ns"), 1), (-1, 1), (0, 1), (1, 2)]
        );
    }

    #[test]
    fn a_bound_inside_a_slot_counts_the_slot_at_the_next_bound() {
        let mut hist = KernelHistogram::default();
        // 1 ms is not a boundary at schema 3; 999_000 ns shares its slot.
        hist.record(999_000);
        let classic = hist.to_classic(&[999_000, 1_000_000, 2_000_000], &[0.0, 0.0, 0.0]);
        assert_eq!(classic.cumulative, vec![0, 0, 1]);
        // The top slot is never counted under a finite bound.
        let mut top = KernelHistogram::default();
        top.record(u64::MAX);
        assert_eq!(top.to_classic(&[u64::MAX], &[0.0]).cumulative, vec![0]);
    }

    #[test]
    fn merging_to_a_coarser_schema_keeps_every_count() {
        let mut hist = KernelHistogram::default();
        let mut nanos = 1u64;
        let mut values = Vec::new();
        while nanos < 1 << 47 {
            hist.record(nanos);
            values.push(nanos);
            nanos = nanos * 5 / 3 + 7;
        }
        let native = hist.native();
        for schema in -4..=KERNEL_SCHEMA as i8 {
            let coarse = native.at_schema(schema);
            assert_eq!(coarse.schema, schema);
            let total: u64 = coarse.buckets.iter().map(|(_, c)| c).sum();
            assert_eq!(total, values.len() as u64);
            assert!(coarse.buckets.windows(2).all(|w| w[0].0 < w[1].0));
            if schema >= 0 {
                let mut expected: Vec<(i32, u64)> = Vec::new();
                for &v in &values {
                    let index = bucket(v, schema as u8).expect("not zero");
                    match expected.last_mut() {
                        Some((last, count)) if *last == index => *count += 1,
                        _ => expected.push((index, 1)),
                    }
                }
                assert_eq!(coarse.buckets, expected, "schema {schema}");
            }
        }
        // A finer schema than was counted is the counted one.
        assert_eq!(*native.at_schema(8), native);
    }

    #[test]
    fn dense_buckets_fill_every_gap_with_zeros() {
        let native = NativeBuckets {
            schema: 3,
            zero_count: 0,
            buckets: vec![(-3, 1), (-1, 2), (0, 3), (10, 4)],
        };
        assert_eq!(
            native.dense(),
            Some((-3, vec![1, 0, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4]))
        );
        assert_eq!(
            NativeBuckets {
                buckets: vec![],
                ..native
            }
            .dense(),
            None
        );
    }

    #[test]
    fn byte_thresholds_are_the_exact_integer_roots() {
        for (k, &threshold) in BYTES_THRESHOLDS.iter().enumerate() {
            let exact = (BigUint::from(1u32) << (63 * 8 + k)).nth_root(8);
            assert_eq!(BigUint::from(threshold), exact, "threshold {k}");
        }
    }

    #[test]
    fn sizes_land_in_the_native_bucket_whose_bounds_hold_them() {
        assert_eq!(kernel_slot(Unit::Bytes, 0), 0);
        // Powers of two sit on boundaries and close their bucket: 2^e bytes is the top
        // of bucket 8e, and from 16 bytes up (where buckets are over a byte wide) one
        // byte more opens bucket 8e + 1.
        for octave in 0..40u32 {
            let hist = |bytes: u64| {
                let mut h = KernelHistogram::new(Unit::Bytes);
                h.record(bytes);
                h.native().buckets
            };
            let k = 8 * octave as i32;
            assert_eq!(hist(1 << octave), vec![(k, 1)], "2^{octave}");
            if octave >= 4 {
                assert_eq!(hist((1 << octave) + 1), vec![(k + 1, 1)], "2^{octave} + 1");
            }
        }
        // Between boundaries, the bucket is the one (2^((i-1)/8), 2^(i/8)] holds; the
        // boundaries are irrational there, so floating point tells them apart.
        let mut bytes = 3u64;
        while bytes < 1 << 40 {
            let mut h = KernelHistogram::new(Unit::Bytes);
            h.record(bytes);
            let (index, _) = h.native().buckets[0];
            let (lower, upper) = (
                (f64::from(index - 1) / 8.0).exp2(),
                (f64::from(index) / 8.0).exp2(),
            );
            assert!(
                lower < bytes as f64 && bytes as f64 <= upper,
                "{bytes} in {index}"
            );
            bytes = bytes * 7 / 5 + 1;
        }
    }

    #[test]
    fn byte_histograms_export_bytes_and_exact_classic_buckets_at_powers_of_two() {
        let mut h = KernelHistogram::new(Unit::Bytes);
        for bytes in [0, 5, 64, 65, 1024, 1025] {
            h.record(bytes);
        }
        let classic = h.to_classic(&[64, 1024], &[64.0, 1024.0]);
        assert_eq!(classic.cumulative, vec![3, 5]);
        assert_eq!(classic.count, 6);
        assert_eq!(classic.sum, 2183.0);
        assert_eq!(classic.native.map(|n| n.zero_count), Some(1));
    }

    #[test]
    fn a_histogram_holds_only_the_run_of_slots_its_values_reach() {
        let mut hist = KernelHistogram::new(Unit::Nanoseconds);
        hist.record(1_000_000);
        hist.record(4_000_000);
        // 1 ms to 4 ms is two octaves: 17 slots, not 386.
        assert_eq!(hist.counts.len(), 17);
        // Growing down and up keeps every count where it was.
        let mut wide = hist.clone();
        wide.record(10);
        wide.record(1 << 40);
        for slot in 0..KERNEL_SLOTS {
            let extra = u64::from(slot == kernel_slot(Unit::Nanoseconds, 10))
                + u64::from(slot == kernel_slot(Unit::Nanoseconds, 1 << 40));
            assert_eq!(wide.slot(slot), hist.slot(slot) + extra, "slot {slot}");
        }
        // Equal counts are equal histograms, however they were built.
        let mut dense = vec![0u64; KERNEL_SLOTS];
        dense[kernel_slot(Unit::Nanoseconds, 1_000_000)] = 1;
        dense[kernel_slot(Unit::Nanoseconds, 4_000_000)] = 1;
        assert_eq!(KernelHistogram::from_parts(&dense, 5_000_000), hist);
        // What was added since an earlier read, even where the earlier read held nothing.
        let delta = wide.since(&hist);
        assert_eq!(delta.count(), 2);
        assert_eq!(delta.sum, 10 + (1 << 40));
        assert_eq!(delta.slot(kernel_slot(Unit::Nanoseconds, 1_000_000)), 0);
        let mut merged = hist.clone();
        merged.merge(&delta);
        assert_eq!(merged, wide);
        assert!(KernelHistogram::default()
            .since(&KernelHistogram::default())
            .is_empty());
    }

    #[test]
    fn a_window_of_slots_keeps_its_zeros_and_its_place() {
        let hist = KernelHistogram::from_window(Unit::Nanoseconds, 2, 73, &[0, 5, 0, 1, 0], 9);
        assert_eq!(hist.slot(0), 2);
        assert_eq!(hist.slot(74), 5);
        assert_eq!(hist.slot(76), 1);
        assert_eq!(hist.count(), 8);
        assert_eq!(hist.sum, 9);
        // A window reaching past the kernel's slots keeps only what fits.
        let past = KernelHistogram::from_window(Unit::Nanoseconds, 0, KERNEL_SLOTS - 1, &[1, 1], 0);
        assert_eq!(past.count(), 1);
        assert!(KernelHistogram::from_window(Unit::Nanoseconds, 0, 73, &[0, 0], 0).is_empty());
    }
}
