//! `fuser::Filesystem` for [`VmCryptFs`]: unpack the request, call the
//! operation, send the reply. No logic lives here.

use std::ffi::OsStr;
use std::path::Path;
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::attr::ATTR_TTL;
use super::cache_mode::CacheMode;
use super::caller::{Caller, CAP_FSETID, CAP_SYS_ADMIN};
use super::creation_umask::create_with_umask;
use super::VmCryptFs;
use crate::format::xattr::{sized_reply, SizedReply};

/// Largest read/write request we ask the kernel for (it caps this at
/// `/proc/sys/fs/fuse/max_pages_limit` pages, 1 MiB by default).
const MAX_REQUEST_BYTES: u32 = 1 << 20;

thread_local! {
    /// Reply buffer of each FUSE worker thread, reused across reads.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn open_flags(mode: CacheMode) -> FopenFlags {
    match mode {
        CacheMode::PageCache => FopenFlags::empty(),
        CacheMode::Direct => FopenFlags::FOPEN_DIRECT_IO,
        CacheMode::DirectParallelWrites => {
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
        }
    }
}

/// The process behind `req`.
fn caller_of(req: &Request) -> Caller {
    Caller {
        pid: req.pid(),
        uid: req.uid(),
        gid: req.gid(),
    }
}

impl Filesystem for VmCryptFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_REQUEST_BYTES);
        let _ = config.set_max_readahead(MAX_REQUEST_BYTES);
        // Byte-range locks come to us so they can be forwarded to the
        // backing files (lock_ops); without this the kernel keeps them local.
        // Writable opens of encrypted disks are direct (cache_mode), which
        // needs the kernel to allow mmap of direct files and keep them
        // coherent with cached opens of the same file.
        let direct_io_mmap = config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok();
        self.set_direct_io_mmap(direct_io_mmap);
        if !direct_io_mmap {
            log::info!("kernel lacks FUSE_DIRECT_IO_ALLOW_MMAP (Linux < 6.6): every file goes through the page cache");
        }
        // Direct I/O from an asynchronous submitter (QEMU `cache=none` with
        // `aio=native` or io_uring, fio's libaio) reaches us as that many
        // requests in flight, which our worker threads serve in parallel;
        // without it the kernel serves each such request synchronously,
        // one at a time per submitting thread, whatever the queue depth.
        if config.add_capabilities(InitFlags::FUSE_ASYNC_DIO).is_ok() {
            log::info!("asynchronous direct I/O: queued requests reach the mount in parallel");
        } else {
            log::info!("kernel lacks FUSE_ASYNC_DIO: direct I/O is served one request at a time per submitter");
        }
        // Listings carry each entry's attributes (dir_ops), for every
        // listing, not only the first page of each (READDIRPLUS_AUTO):
        // VM homes are small, and what lists them (`ls -l`, `rm -r`, a
        // datastore browser) looks at the entries next.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS) {
            log::info!("kernel lacks {missing:?}: each listed entry is looked up on its own");
        }
        // Clearing set-id bits on write and truncate is ours (write_flags,
        // setattr). Without it, the kernel asks for `security.capability`
        // before every write (it cannot mark a FUSE inode as having no
        // security attributes), one more round trip that halved the 4 KiB
        // direct write IOPS once the mount answered extended attributes.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2) {
            log::info!("kernel lacks {missing:?}: every write first asks for security.capability");
        }
        // The kernel enforces ACLs on the mount's inodes (reading them
        // through getxattr, which passes `system.posix_acl_*` through), and
        // leaves the umask to us, so that a parent's default ACL can
        // override it as on the backing file system (creation_umask).
        match config.add_capabilities(InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK) {
            Ok(()) => {}
            Err(missing) => log::warn!(
                "kernel lacks {missing:?}: ACLs are stored but only mode bits are enforced"
            ),
        }
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS) {
            log::warn!("kernel lacks {missing:?}: byte-range locks stay local to this mount");
        }
        // Unencrypted files (pass-through disks, plain directories) are served
        // by the kernel straight from the backing file where it can (Linux
        // 6.9+, FUSE_PASSTHROUGH, needs CAP_SYS_ADMIN). A stack depth of 2
        // lets the datastore itself sit on overlayfs.
        let passthrough = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config
                .set_max_stack_depth(2)
                .or_else(|_| config.set_max_stack_depth(1))
                .is_ok();
        self.set_passthrough(passthrough);
        if passthrough {
            log::info!("unencrypted files use kernel passthrough");
        } else {
            log::info!("kernel passthrough unavailable: unencrypted files go through FUSE");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup(parent.0, name) {
            Ok(attr) => reply.entry(&ATTR_TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(attr) => reply.attr(&ATTR_TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Only a truncate by a caller without CAP_FSETID clears set-id bits.
        let caller = caller_of(req);
        let setid_clearer =
            (size.is_some() && !caller.has_capability(CAP_FSETID)).then_some(caller);
        match self.setattr(
            ino.0,
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh.map(|f| f.0),
            setid_clearer,
        ) {
            Ok(attr) => reply.attr(&ATTR_TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let made = create_with_umask(umask, mode, |mode| {
            self.mknod(parent.0, name, mode, rdev, req.uid(), req.gid())
        });
        match made {
            Ok(attr) => reply.entry(&ATTR_TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let made = create_with_umask(umask, mode, |mode| {
            self.mkdir(parent.0, name, mode, req.uid(), req.gid())
        });
        match made {
            Ok(attr) => reply.entry(&ATTR_TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.rmdir(parent.0, name));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match self.symlink(parent.0, link_name, target, req.uid(), req.gid()) {
            Ok(attr) => reply.entry(&ATTR_TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.rename(parent.0, name, newparent.0, newname, flags),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.link(ino.0, newparent.0, newname) {
            Ok(attr) => reply.entry(&ATTR_TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.open(ino.0, flags.0) {
            Ok((fh, mode)) => {
                match self.passthrough_backing(ino.0, fh, |file| reply.open_backing(file)) {
                    Some(id) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id),
                    None => self.reply_after_fill(ino.0, fh, move || {
                        reply.opened(FileHandle(fh), open_flags(mode))
                    }),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        READ_BUFFER.with_borrow_mut(|buf| match self.read(ino.0, fh.0, offset, size, buf) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(e),
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // The kernel flags a write whose set-id bits must go (the writer
        // lacks CAP_FSETID); which ones depends on the writer's groups.
        let setid_clearer = write_flags
            .contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            .then(|| caller_of(req));
        match self.write(ino.0, fh.0, offset, data, setid_clearer) {
            Ok(written) => reply.written(written),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.release_lock_owner(ino.0, lock_owner.0);
        reply_empty(reply, self.flush(fh.0));
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        match self.getlk(ino.0, fh.0, lock_owner.0, start, end, typ) {
            Ok((start, end, typ)) => reply.locked(start, end, typ, 0),
            Err(e) => reply.error(e),
        }
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        self.setlk(
            ino.0,
            fh.0,
            lock_owner.0,
            (start, end, typ),
            sleep,
            req.pid(),
            move |result| reply_empty(reply, result),
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fsync(fh.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = self.readdir(fh.0, offset, |ino, next, kind, name| {
            reply.add(INodeNo(ino), next, kind, name)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let result = self.readdirplus(ino.0, fh.0, offset, |attr, next, name| {
            reply.add(attr.ino, next, name, &ATTR_TTL, attr, Generation(0))
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fsyncdir(ino.0));
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.setxattr(ino.0, name, value, flags));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.getxattr(ino.0, name) {
            Ok(value) => reply_sized(reply, &value, size),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let show_trusted = caller_of(req).has_capability(CAP_SYS_ADMIN);
        match self.listxattr(ino.0, show_trusted) {
            Ok(names) => reply_sized(reply, &names, size),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.removexattr(ino.0, name));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fallocate(ino.0, fh.0, offset, length, mode));
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.lseek(ino.0, fh.0, offset, whence) {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(e),
        }
    }

    /// No ioctl means anything on a vmcryptfs file: those of the backing
    /// file (FICLONE, FS_IOC_*) would act on ciphertext or bypass the
    /// encryption. ENOTTY is what a file without ioctls answers, and it
    /// is answered quietly: fuser's default logs a warning per call, and
    /// every `open()` in Python asks whether the file is a terminal
    /// (TCGETS), 50,000 warnings in one benchmark run.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let made = create_with_umask(umask, mode, |mode| {
            self.create(parent.0, name, mode, flags, req.uid(), req.gid())
        });
        match made {
            Ok((attr, fh, mode)) => {
                match self.passthrough_backing(attr.ino.0, fh, |file| reply.open_backing(file)) {
                    Some(id) => reply.created_passthrough(
                        &ATTR_TTL,
                        &attr,
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::empty(),
                        &id,
                    ),
                    None => self.reply_after_fill(attr.ino.0, fh, move || {
                        reply.created(
                            &ATTR_TTL,
                            &attr,
                            Generation(0),
                            FileHandle(fh),
                            open_flags(mode),
                        )
                    }),
                }
            }
            Err(e) => reply.error(e),
        }
    }
}

impl VmCryptFs {
    /// Sends an open's reply with `send`, after any fill of `ino` in flight
    /// when `fh` is writable (see `cache_fill`). The wait is in its own
    /// thread: a fill may itself wait for a FUSE worker to answer a read.
    fn reply_after_fill(&self, ino: u64, fh: u64, send: impl FnOnce() + Send + 'static) {
        let Some(gate) = self.must_wait_for_fill(ino, fh) else {
            return send();
        };
        // Kept here too, so that the reply is still sent if no thread starts.
        let pending = std::sync::Arc::new(std::sync::Mutex::new(Some(send)));
        let in_thread = pending.clone();
        let waiting = gate.clone();
        let spawned = std::thread::Builder::new()
            .name("fill-wait".into())
            .spawn(move || {
                waiting.wait_for_fill(ino);
                if let Some(send) = in_thread.lock().expect("pending reply").take() {
                    send();
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a fill-wait thread ({e}); waiting on the worker");
            gate.wait_for_fill(ino);
            if let Some(send) = pending.lock().expect("pending reply").take() {
                send();
            }
        }
    }
}

/// Answers a get or list of `bytes` for a caller whose buffer holds
/// `size` bytes: the length alone for a size probe (0), the bytes if they
/// fit, ERANGE if not.
fn reply_sized(reply: ReplyXattr, bytes: &[u8], size: u32) {
    match sized_reply(bytes.len(), size) {
        SizedReply::Size(len) => reply.size(len),
        SizedReply::Data => reply.data(bytes),
        SizedReply::TooSmall => reply.error(Errno::ERANGE),
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}
