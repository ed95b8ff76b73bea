/** Decode a PNG far enough to know it is one: signature, every chunk's CRC, IHDR, and the inflated pixel data's size. */
import { crc32, inflateSync } from "node:zlib";

export interface PngInfo {
  width: number;
  height: number;
}

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 }; // by colour type

export function decodePng(bytes: Uint8Array): PngInfo {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (!SIGNATURE.every((b, i) => buf[i] === b)) throw new Error("not a PNG: bad signature");
  let offset = 8;
  let header: { width: number; height: number; depth: number; colour: number } | undefined;
  const idat: Buffer[] = [];
  for (;;) {
    const length = buf.readUInt32BE(offset);
    const type = buf.toString("latin1", offset + 4, offset + 8);
    const data = buf.subarray(offset + 8, offset + 8 + length);
    if (crc32(buf.subarray(offset + 4, offset + 8 + length)) !== buf.readUInt32BE(offset + 8 + length)) {
      throw new Error(`PNG chunk ${type}: bad CRC`);
    }
    if (type === "IHDR") {
      header = { width: data.readUInt32BE(0), height: data.readUInt32BE(4), depth: data[8], colour: data[9] };
    } else if (type === "IDAT") {
      idat.push(data);
    } else if (type === "IEND") {
      break;
    }
    offset += 12 + length;
  }
  if (header === undefined || idat.length === 0) throw new Error("PNG without IHDR or IDAT");
  const { width, height, depth, colour } = header;
  const rowBytes = Math.ceil((width * CHANNELS[colour] * depth) / 8);
  const pixels = inflateSync(Buffer.concat(idat));
  if (pixels.length !== height * (1 + rowBytes)) {
    throw new Error(`PNG pixel data is ${pixels.length} bytes, expected ${height * (1 + rowBytes)}`);
  }
  return { width, height };
}
