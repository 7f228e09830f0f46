// transform_reference: BVLC Caffe's DataTransformer (TEST phase) on one uint8 Datum, for tests/test_zoo.py.
//
// usage: transform_reference MEAN.binaryproto CROP SCALE MIRROR RUNS IN.u8 C H W OUT.f32
// IN.u8 holds C x H x W bytes (BGR planes, as a Datum stores them). The transform runs RUNS times
// (with MIRROR, Caffe flips a coin per run) and OUT.f32 receives every result, float32, back to back.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "caffe/common.hpp"
#include "caffe/data_transformer.hpp"

int main(int argc, char** argv) {
  if (argc != 11) {
    std::fprintf(stderr, "usage: %s MEAN CROP SCALE MIRROR RUNS IN.u8 C H W OUT.f32\n", argv[0]);
    return 2;
  }
  caffe::Caffe::set_random_seed(1);
  caffe::TransformationParameter param;
  param.set_mean_file(argv[1]);
  param.set_crop_size(std::atoi(argv[2]));
  param.set_scale(std::atof(argv[3]));
  param.set_mirror(std::atoi(argv[4]) != 0);
  const int runs = std::atoi(argv[5]);
  const int channels = std::atoi(argv[7]), height = std::atoi(argv[8]), width = std::atoi(argv[9]);
  std::ifstream in(argv[6], std::ios::binary);
  std::string pixels(static_cast<size_t>(channels) * height * width, '\0');
  in.read(&pixels[0], pixels.size());
  caffe::Datum datum;
  datum.set_channels(channels);
  datum.set_height(height);
  datum.set_width(width);
  datum.set_data(pixels);
  caffe::DataTransformer<float> transformer(param, caffe::TEST);
  transformer.InitRand();
  const int crop = param.crop_size();
  caffe::Blob<float> blob(1, channels, crop, crop);
  std::ofstream out(argv[10], std::ios::binary);
  for (int run = 0; run < runs; ++run) {
    transformer.Transform(datum, &blob);
    out.write(reinterpret_cast<const char*>(blob.cpu_data()), blob.count() * sizeof(float));
  }
  return 0;
}
