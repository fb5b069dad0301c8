//! Xen's error numbers, from Xen 4.17's `public/errno.h`.
//!
//! Hypercalls return `-errno` on failure. [`XenError`](super::XenError) names the error so that
//! logs and error values say `ENOSYS`, not `-38`.

/// An error number Xen returned, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Errno {
    /// Operation not permitted (1).
    EPERM = 1,
    /// No such file or directory (2).
    ENOENT = 2,
    /// No such process (3).
    ESRCH = 3,
    /// Interrupted system call (4).
    EINTR = 4,
    /// I/O error (5).
    EIO = 5,
    /// No such device or address (6).
    ENXIO = 6,
    /// Arg list too long (7).
    E2BIG = 7,
    /// Exec format error (8).
    ENOEXEC = 8,
    /// Bad file number (9).
    EBADF = 9,
    /// No child processes (10).
    ECHILD = 10,
    /// Try again (11).
    EAGAIN = 11,
    /// Out of memory (12).
    ENOMEM = 12,
    /// Permission denied (13).
    EACCES = 13,
    /// Bad address (14).
    EFAULT = 14,
    /// Device or resource busy (16).
    EBUSY = 16,
    /// File exists (17).
    EEXIST = 17,
    /// Cross-device link (18).
    EXDEV = 18,
    /// No such device (19).
    ENODEV = 19,
    /// Not a directory (20).
    ENOTDIR = 20,
    /// Is a directory (21).
    EISDIR = 21,
    /// Invalid argument (22).
    EINVAL = 22,
    /// File table overflow (23).
    ENFILE = 23,
    /// Too many open files (24).
    EMFILE = 24,
    /// No space left on device (28).
    ENOSPC = 28,
    /// Read-only file system (30).
    EROFS = 30,
    /// Too many links (31).
    EMLINK = 31,
    /// Math argument out of domain of func (33).
    EDOM = 33,
    /// Math result not representable (34).
    ERANGE = 34,
    /// Resource deadlock would occur (35).
    EDEADLK = 35,
    /// File name too long (36).
    ENAMETOOLONG = 36,
    /// No record locks available (37).
    ENOLCK = 37,
    /// Function not implemented (38).
    ENOSYS = 38,
    /// Directory not empty (39).
    ENOTEMPTY = 39,
    /// No data available (61).
    ENODATA = 61,
    /// Timer expired (62).
    ETIME = 62,
    /// Not a data message (74).
    EBADMSG = 74,
    /// Value too large for defined data type (75).
    EOVERFLOW = 75,
    /// Illegal byte sequence (84).
    EILSEQ = 84,
    /// Interrupted system call should be restarted (85).
    ERESTART = 85,
    /// Socket operation on non-socket (88).
    ENOTSOCK = 88,
    /// Message too large (90).
    EMSGSIZE = 90,
    /// Operation not supported on transport endpoint (95).
    EOPNOTSUPP = 95,
    /// Address already in use (98).
    EADDRINUSE = 98,
    /// Cannot assign requested address (99).
    EADDRNOTAVAIL = 99,
    /// No buffer space available (105).
    ENOBUFS = 105,
    /// Transport endpoint is already connected (106).
    EISCONN = 106,
    /// Transport endpoint is not connected (107).
    ENOTCONN = 107,
    /// Connection timed out (110).
    ETIMEDOUT = 110,
    /// Connection refused (111).
    ECONNREFUSED = 111,
}

impl Errno {
    /// The errno for a positive error number, if Xen defines it.
    pub const fn from_raw(v: i64) -> Option<Errno> {
        Some(match v {
            1 => Errno::EPERM,
            2 => Errno::ENOENT,
            3 => Errno::ESRCH,
            4 => Errno::EINTR,
            5 => Errno::EIO,
            6 => Errno::ENXIO,
            7 => Errno::E2BIG,
            8 => Errno::ENOEXEC,
            9 => Errno::EBADF,
            10 => Errno::ECHILD,
            11 => Errno::EAGAIN,
            12 => Errno::ENOMEM,
            13 => Errno::EACCES,
            14 => Errno::EFAULT,
            16 => Errno::EBUSY,
            17 => Errno::EEXIST,
            18 => Errno::EXDEV,
            19 => Errno::ENODEV,
            20 => Errno::ENOTDIR,
            21 => Errno::EISDIR,
            22 => Errno::EINVAL,
            23 => Errno::ENFILE,
            24 => Errno::EMFILE,
            28 => Errno::ENOSPC,
            30 => Errno::EROFS,
            31 => Errno::EMLINK,
            33 => Errno::EDOM,
            34 => Errno::ERANGE,
            35 => Errno::EDEADLK,
            36 => Errno::ENAMETOOLONG,
            37 => Errno::ENOLCK,
            38 => Errno::ENOSYS,
            39 => Errno::ENOTEMPTY,
            61 => Errno::ENODATA,
            62 => Errno::ETIME,
            74 => Errno::EBADMSG,
            75 => Errno::EOVERFLOW,
            84 => Errno::EILSEQ,
            85 => Errno::ERESTART,
            88 => Errno::ENOTSOCK,
            90 => Errno::EMSGSIZE,
            95 => Errno::EOPNOTSUPP,
            98 => Errno::EADDRINUSE,
            99 => Errno::EADDRNOTAVAIL,
            105 => Errno::ENOBUFS,
            106 => Errno::EISCONN,
            107 => Errno::ENOTCONN,
            110 => Errno::ETIMEDOUT,
            111 => Errno::ECONNREFUSED,
            _ => return None,
        })
    }

    /// The name as `public/errno.h` spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Errno::EPERM => "EPERM",
            Errno::ENOENT => "ENOENT",
            Errno::ESRCH => "ESRCH",
            Errno::EINTR => "EINTR",
            Errno::EIO => "EIO",
            Errno::ENXIO => "ENXIO",
            Errno::E2BIG => "E2BIG",
            Errno::ENOEXEC => "ENOEXEC",
            Errno::EBADF => "EBADF",
            Errno::ECHILD => "ECHILD",
            Errno::EAGAIN => "EAGAIN",
            Errno::ENOMEM => "ENOMEM",
            Errno::EACCES => "EACCES",
            Errno::EFAULT => "EFAULT",
            Errno::EBUSY => "EBUSY",
            Errno::EEXIST => "EEXIST",
            Errno::EXDEV => "EXDEV",
            Errno::ENODEV => "ENODEV",
            Errno::ENOTDIR => "ENOTDIR",
            Errno::EISDIR => "EISDIR",
            Errno::EINVAL => "EINVAL",
            Errno::ENFILE => "ENFILE",
            Errno::EMFILE => "EMFILE",
            Errno::ENOSPC => "ENOSPC",
            Errno::EROFS => "EROFS",
            Errno::EMLINK => "EMLINK",
            Errno::EDOM => "EDOM",
            Errno::ERANGE => "ERANGE",
            Errno::EDEADLK => "EDEADLK",
            Errno::ENAMETOOLONG => "ENAMETOOLONG",
            Errno::ENOLCK => "ENOLCK",
            Errno::ENOSYS => "ENOSYS",
            Errno::ENOTEMPTY => "ENOTEMPTY",
            Errno::ENODATA => "ENODATA",
            Errno::ETIME => "ETIME",
            Errno::EBADMSG => "EBADMSG",
            Errno::EOVERFLOW => "EOVERFLOW",
            Errno::EILSEQ => "EILSEQ",
            Errno::ERESTART => "ERESTART",
            Errno::ENOTSOCK => "ENOTSOCK",
            Errno::EMSGSIZE => "EMSGSIZE",
            Errno::EOPNOTSUPP => "EOPNOTSUPP",
            Errno::EADDRINUSE => "EADDRINUSE",
            Errno::EADDRNOTAVAIL => "EADDRNOTAVAIL",
            Errno::ENOBUFS => "ENOBUFS",
            Errno::EISCONN => "EISCONN",
            Errno::ENOTCONN => "ENOTCONN",
            Errno::ETIMEDOUT => "ETIMEDOUT",
            Errno::ECONNREFUSED => "ECONNREFUSED",
        }
    }

    /// What the error means, as `public/errno.h` says it.
    pub const fn description(self) -> &'static str {
        match self {
            Errno::EPERM => "Operation not permitted",
            Errno::ENOENT => "No such file or directory",
            Errno::ESRCH => "No such process",
            Errno::EINTR => "Interrupted system call",
            Errno::EIO => "I/O error",
            Errno::ENXIO => "No such device or address",
            Errno::E2BIG => "Arg list too long",
            Errno::ENOEXEC => "Exec format error",
            Errno::EBADF => "Bad file number",
            Errno::ECHILD => "No child processes",
            Errno::EAGAIN => "Try again",
            Errno::ENOMEM => "Out of memory",
            Errno::EACCES => "Permission denied",
            Errno::EFAULT => "Bad address",
            Errno::EBUSY => "Device or resource busy",
            Errno::EEXIST => "File exists",
            Errno::EXDEV => "Cross-device link",
            Errno::ENODEV => "No such device",
            Errno::ENOTDIR => "Not a directory",
            Errno::EISDIR => "Is a directory",
            Errno::EINVAL => "Invalid argument",
            Errno::ENFILE => "File table overflow",
            Errno::EMFILE => "Too many open files",
            Errno::ENOSPC => "No space left on device",
            Errno::EROFS => "Read-only file system",
            Errno::EMLINK => "Too many links",
            Errno::EDOM => "Math argument out of domain of func",
            Errno::ERANGE => "Math result not representable",
            Errno::EDEADLK => "Resource deadlock would occur",
            Errno::ENAMETOOLONG => "File name too long",
            Errno::ENOLCK => "No record locks available",
            Errno::ENOSYS => "Function not implemented",
            Errno::ENOTEMPTY => "Directory not empty",
            Errno::ENODATA => "No data available",
            Errno::ETIME => "Timer expired",
            Errno::EBADMSG => "Not a data message",
            Errno::EOVERFLOW => "Value too large for defined data type",
            Errno::EILSEQ => "Illegal byte sequence",
            Errno::ERESTART => "Interrupted system call should be restarted",
            Errno::ENOTSOCK => "Socket operation on non-socket",
            Errno::EMSGSIZE => "Message too large",
            Errno::EOPNOTSUPP => "Operation not supported on transport endpoint",
            Errno::EADDRINUSE => "Address already in use",
            Errno::EADDRNOTAVAIL => "Cannot assign requested address",
            Errno::ENOBUFS => "No buffer space available",
            Errno::EISCONN => "Transport endpoint is already connected",
            Errno::ENOTCONN => "Transport endpoint is not connected",
            Errno::ETIMEDOUT => "Connection timed out",
            Errno::ECONNREFUSED => "Connection refused",
        }
    }
}
