// ImageService: ListImages, ImageStatus, PullImage, RemoveImage, ImageFsInfo, over the
// image store; an image a container uses is not removed.
import type { RuntimeContext } from "../context";
import { imageMessage, nowNs } from "../convert";
import type * as cri from "../cri/generated";
import { failedPrecondition, invalidArgument } from "../errors";
import { imageId } from "../images/image-store";

export class ImageCalls {
  constructor(private readonly ctx: RuntimeContext) {}

  listImages(req: cri.ListImagesRequest__Output): cri.ListImagesResponse {
    const wanted = req.filter?.image?.image;
    if (wanted) {
      const found = this.ctx.images.find(wanted);
      return { images: found ? [imageMessage(found)] : [] };
    }
    return { images: this.ctx.images.list().map(imageMessage) };
  }

  imageStatus(req: cri.ImageStatusRequest__Output): cri.ImageStatusResponse {
    const ref = req.image?.image;
    if (!ref) throw invalidArgument("ImageStatus: image.image is required");
    const found = this.ctx.images.find(ref);
    // An absent image is not an error: kubelet asks before it pulls.
    if (!found) return { image: null, info: {} };
    const info: Record<string, string> = req.verbose
      ? {
          info: JSON.stringify({
            format: found.format,
            source: found.source,
            pulledAt: found.pulledAt,
          }),
        }
      : {};
    return { image: imageMessage(found), info };
  }

  async pullImage(req: cri.PullImageRequest__Output): Promise<cri.PullImageResponse> {
    const ref = req.image?.image;
    if (!ref) throw invalidArgument("PullImage: image.image is required");
    const record = await this.ctx.images.pull(ref);
    return { imageRef: imageId(record) };
  }

  async removeImage(req: cri.RemoveImageRequest__Output): Promise<cri.RemoveImageResponse> {
    const ref = req.image?.image;
    if (!ref) throw invalidArgument("RemoveImage: image.image is required");
    const found = this.ctx.images.find(ref);
    if (!found) return {}; // idempotent
    const users = this.ctx.store.containers.list().filter((c) => c.image.id === found.id);
    if (users.length > 0) {
      throw failedPrecondition(
        `RemoveImage ${ref}: image ${imageId(found)} is used by container${users.length > 1 ? "s" : ""} ${users.map((c) => c.id).join(", ")}`,
      );
    }
    await this.ctx.images.remove(found);
    return {};
  }

  async imageFsInfo(_req: cri.ImageFsInfoRequest__Output): Promise<cri.ImageFsInfoResponse> {
    const usage = await this.ctx.images.fsUsage();
    return {
      imageFilesystems: [
        {
          timestamp: nowNs(),
          fsId: { mountpoint: usage.mountpoint },
          usedBytes: { value: String(usage.usedBytes) },
          inodesUsed: { value: String(usage.inodesUsed) },
        },
      ],
      containerFilesystems: [],
    };
  }
}
