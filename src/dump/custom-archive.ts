/**
 * A streaming reader of pg_dump's custom archive format, for the restore that
 * loads table data itself (see restore-engine's laneLoad). It reads what
 * pg_restore reads from a pipe: the header, the table of contents, then data
 * blocks in the order pg_dump wrote them.
 *
 * Only what the loader needs is supported, and anything else is refused so the
 * caller can fall back to pg_restore: format versions 1.12-1.16 (pg_dump 9.5 to
 * 17), data stored uncompressed (pg_dump -Z0, how the service writes archives:
 * each chunk then holds COPY text) and blocks of table data, not large objects.
 *
 * The layout follows PostgreSQL's src/bin/pg_dump/pg_backup_archiver.c
 * (ReadHead, ReadToc) and pg_backup_custom.c (block headers and chunks):
 * integers are a sign byte and `intSize` bytes, least significant first;
 * strings are an integer length (-1: null) and the bytes.
 */

export interface TocEntry {
  dumpId: number;
  hadDumper: boolean;
  tag: string | null;
  namespace: string | null;
  /** "TABLE", "TABLE DATA", "SEQUENCE SET", "BLOBS", ... */
  desc: string | null;
  /** 1 none, 2 pre-data, 3 data, 4 post-data. */
  section: number;
  defn: string | null;
  /** For TABLE DATA: the "COPY ... FROM stdin;" statement its data belongs to. */
  copyStmt: string | null;
  /** The dump ids of the entries this one depends on (some may have no entry of their own). */
  deps: number[];
}

export interface ArchiveHead {
  /** "1.14" */
  version: string;
  /** 0: data chunks are stored as they are. */
  compression: number;
  entries: TocEntry[];
  /** The bytes of the header and the table of contents: an archive pg_restore can read for everything but data. */
  headBytes: Buffer;
}

/** Why an archive cannot be loaded by the reader (the caller uses pg_restore instead). */
export class UnsupportedArchiveError extends Error {
  override name = "UnsupportedArchiveError";
}

/** The archive itself is damaged: it ends early or holds what no pg_dump writes. */
export class ArchiveFormatError extends Error {
  override name = "ArchiveFormatError";
}

/**
 * The table a TABLE DATA entry's "COPY <table> (...) FROM stdin;" loads, as
 * pg_dump names it (fmtQualifiedId: an identifier that is not plain lower case
 * is double-quoted); null for anything else. pg_dump
 * --load-via-partition-root names the partitioned root here rather than the
 * entry's own partition.
 */
export function copyTarget(copyStmt: string): { schema: string | null; name: string } | null {
  const ident = String.raw`("(?:[^"]|"")+"|[a-z_][a-z0-9_$]*)`;
  const m = new RegExp(String.raw`^COPY ${ident}(?:\.${ident})? [(F]`).exec(copyStmt);
  if (!m) return null;
  const unquote = (s: string) => (s.startsWith('"') ? s.slice(1, -1).replace(/""/g, '"') : s);
  return m[2] === undefined ? { schema: null, name: unquote(m[1]!) } : { schema: unquote(m[1]!), name: unquote(m[2]) };
}

const MAGIC = "PGDMP";
const FORMAT_CUSTOM = 1;
const BLK_DATA = 1;
const vers = (minor: number) => (1 << 16) | (minor << 8);
const OLDEST = vers(12);
const NEWEST = vers(16);

export class CustomArchiveReader {
  private buf: Buffer = Buffer.alloc(0);
  private pos = 0;
  /** Bytes of the stream before `buf`. */
  private base = 0;
  private intSize = 4;
  private offSize = 8;
  private version = 0;
  private ended = false;
  /** The part of the source's last read not yet in `buf` (see fill). */
  private pending: Buffer | null = null;
  /** While reading the head: every byte that went by, for `headBytes`. */
  private record: Buffer[] | null = [];

  constructor(private readonly source: AsyncIterator<Buffer>) {}

  /** Bytes of the archive read so far. */
  get position(): number {
    return this.base + this.pos;
  }

  /**
   * Makes at least `n` unread bytes available; false at the end of the stream.
   *
   * What is left unread of the current buffer (a few bytes of a header cut by
   * the end of a read, say) is copied, and joined by only as many bytes of the
   * next read as are needed; the rest of that read stays where it is
   * (`pending`). So rows are always handed on as views of the source's own
   * buffers, which a SlabSource can hold and reuse, and a cut header costs a
   * few bytes, not a copy of a whole read (up to 1 MiB, some sixty times per
   * restore of the benchmark database: external memory V8 collects late).
   */
  private async fill(n: number): Promise<boolean> {
    while (this.buf.length - this.pos < n) {
      // A copy of what is kept: a source may reuse its buffers once the next one is asked for
      // (SlabSource).
      const rest = this.buf.length > this.pos ? Buffer.from(this.buf.subarray(this.pos)) : null;
      let chunk = this.pending;
      this.pending = null;
      if (!chunk) {
        if (this.ended) return false;
        const r = await this.source.next();
        if (r.done) {
          this.ended = true;
          if (rest) {
            this.base += this.pos;
            this.buf = rest;
            this.pos = 0;
          }
          return false;
        }
        chunk = r.value;
        this.record?.push(Buffer.from(chunk));
      }
      this.base += this.pos;
      this.pos = 0;
      if (rest) {
        const take = Math.min(chunk.length, n - rest.length);
        this.buf = Buffer.concat([rest, chunk.subarray(0, take)]);
        if (take < chunk.length) this.pending = chunk.subarray(take);
      } else {
        this.buf = chunk;
      }
    }
    return true;
  }

  private async need(n: number, what: string): Promise<void> {
    if (!(await this.fill(n))) throw new ArchiveFormatError(`the archive ends inside ${what}`);
  }

  private intAt(p: number): number {
    const b = this.buf;
    let v: number;
    if (this.intSize === 4) {
      // Every pg_dump of this century: the one read per row, kept cheap.
      v = (b[p + 1]! | (b[p + 2]! << 8) | (b[p + 3]! << 16)) + b[p + 4]! * 0x1000000;
    } else {
      v = 0;
      for (let i = this.intSize - 1; i >= 0; i--) v = v * 256 + b[p + 1 + i]!;
    }
    return b[p] ? -v : v;
  }

  private async byte(what: string): Promise<number> {
    await this.need(1, what);
    return this.buf[this.pos++]!;
  }

  private async int(what: string): Promise<number> {
    await this.need(1 + this.intSize, what);
    const v = this.intAt(this.pos);
    this.pos += 1 + this.intSize;
    return v;
  }

  private async str(what: string): Promise<string | null> {
    const len = await this.int(what);
    if (len < 0) return null;
    if (len > 1 << 30) throw new ArchiveFormatError(`${what} claims ${len} bytes`);
    await this.need(len, what);
    const s = this.buf.toString("utf8", this.pos, this.pos + len);
    this.pos += len;
    return s;
  }

  /** The header and the table of contents. */
  async readHead(): Promise<ArchiveHead> {
    await this.need(MAGIC.length, "the header");
    if (this.buf.toString("latin1", 0, MAGIC.length) !== MAGIC) {
      throw new UnsupportedArchiveError("not a pg_dump custom archive");
    }
    this.pos = MAGIC.length;
    const vmaj = await this.byte("the header");
    const vmin = await this.byte("the header");
    const vrev = await this.byte("the header");
    this.version = (vmaj << 16) | (vmin << 8) | vrev;
    const version = `${vmaj}.${vmin}`;
    if (this.version < OLDEST || this.version > NEWEST + 0xff) {
      throw new UnsupportedArchiveError(`archive format ${version} (this reader knows 1.12 to 1.16)`);
    }
    this.intSize = await this.byte("the header");
    this.offSize = await this.byte("the header");
    if (this.intSize < 1 || this.intSize > 6 || this.offSize < 1 || this.offSize > 8) {
      throw new UnsupportedArchiveError(`integer size ${this.intSize}, offset size ${this.offSize}`);
    }
    if ((await this.byte("the header")) !== FORMAT_CUSTOM) throw new UnsupportedArchiveError("not the custom format");
    // 1.15 (pg_dump 16) names a compression algorithm (0: none); before, a zlib level (0: none).
    const compression = this.version >= vers(15) ? await this.byte("the header") : await this.int("the header");
    for (let i = 0; i < 7; i++) await this.int("the header"); // the time it was made
    await this.str("the header"); // database name
    await this.str("the header"); // server version
    await this.str("the header"); // pg_dump version

    const count = await this.int("the table of contents");
    if (count < 0 || count > 10_000_000) throw new ArchiveFormatError(`the table of contents claims ${count} entries`);
    const entries: TocEntry[] = [];
    const what = "the table of contents";
    for (let i = 0; i < count; i++) {
      const dumpId = await this.int(what);
      const hadDumper = (await this.int(what)) !== 0;
      await this.str(what); // table oid
      await this.str(what); // oid
      const tag = await this.str(what);
      const desc = await this.str(what);
      const section = await this.int(what);
      const defn = await this.str(what);
      await this.str(what); // drop statement
      const copyStmt = await this.str(what);
      const namespace = await this.str(what);
      await this.str(what); // tablespace
      if (this.version >= vers(14)) await this.str(what); // table access method
      if (this.version >= vers(16)) await this.int(what); // relkind
      await this.str(what); // owner
      await this.str(what); // "with oids" (always false now)
      const deps: number[] = [];
      for (let dep = await this.str(what); dep !== null; dep = await this.str(what)) deps.push(Number(dep));
      // The data offset (custom format): a flag byte and `offSize` bytes.
      await this.byte(what);
      await this.need(this.offSize, what);
      this.pos += this.offSize;
      entries.push({ dumpId, hadDumper, tag, namespace, desc, section, defn, copyStmt, deps });
    }
    const headLength = this.base + this.pos;
    const headBytes = Buffer.concat(this.record!).subarray(0, headLength);
    this.record = null;
    return { version, compression, entries, headBytes: Buffer.from(headBytes) };
  }

  /** The next data block's dump id, or null at the end of the archive. */
  async nextBlock(): Promise<number | null> {
    if (!(await this.fill(1))) return null;
    const type = this.buf[this.pos++]!;
    if (type !== BLK_DATA) throw new UnsupportedArchiveError(`a data block of type ${type} (large objects?)`);
    return this.int("a block header");
  }

  /**
   * The current block's data, its chunk headers removed, handed to `sink` a
   * piece at a time as it arrives (pieces follow one another with no regard
   * for rows). Pieces are views of the source's buffers, valid until `sink`'s
   * promise resolves: a source that reuses its buffers (SlabSource) must be
   * told of any piece kept longer. Resolves with the data's length.
   */
  async readData(sink: (piece: Buffer) => Promise<void>): Promise<number> {
    const headerSize = 1 + this.intSize;
    let left = 0; // bytes of the current chunk not yet taken
    let total = 0;
    for (;;) {
      // Compact in place: every chunk's bytes move left over the headers before them.
      const b = this.buf;
      const start = this.pos;
      let w = this.pos;
      let p = this.pos;
      let done = false;
      for (;;) {
        if (left > 0) {
          const take = Math.min(left, b.length - p);
          if (w !== p) b.copyWithin(w, p, p + take);
          w += take;
          p += take;
          left -= take;
          if (left > 0) break;
        }
        if (p + headerSize > b.length) break;
        const n = this.intAt(p);
        p += headerSize;
        if (n < 0) throw new ArchiveFormatError(`a data chunk of ${n} bytes`);
        if (n === 0) {
          done = true;
          break;
        }
        left = n;
      }
      this.pos = p;
      if (w > start) {
        total += w - start;
        await sink(b.subarray(start, w));
      }
      if (done) return total;
      // The rest of a header, or more of a chunk, is in what comes next.
      if (!(await this.fill(left > 0 ? 1 : headerSize))) {
        throw new ArchiveFormatError("the archive ends inside a table's data");
      }
    }
  }
}
