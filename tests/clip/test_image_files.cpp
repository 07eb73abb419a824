// Users' own images for the CLIP example: image folders and CSV files, decoded by stb_image from
// PNG files that stb_image_write wrote here.

#include <torch/torch.h>  // before Catch: glog, which torch includes, also defines CHECK

#include <stb_image_write.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "../../examples/clip_continual/data/image_files.hpp"
#include "test_folder.hpp"

using namespace alloy_clip;

namespace {

void write_png(const std::filesystem::path& file, int width, int height, int channels,
               const std::vector<std::uint8_t>& pixel) {
  std::filesystem::create_directories(file.parent_path());
  std::vector<std::uint8_t> data;
  for (int i = 0; i < width * height; ++i) data.insert(data.end(), pixel.begin(), pixel.end());
  REQUIRE(stbi_write_png(file.string().c_str(), width, height, channels, data.data(), width * channels) != 0);
}

}  // namespace

TEST_CASE("an image folder gives sorted classes, labels and resized pixels", "[clip][data]") {
  alloy::testing::test_folder folder;
  const auto root = folder.path() / "images";
  write_png(root / "dog" / "b.png", 10, 10, 1, {90});        // grey, converted to RGB
  write_png(root / "cat" / "a.png", 6, 4, 3, {255, 0, 0});   // red, not square
  write_png(root / "cat" / "c.png", 3, 3, 3, {0, 0, 255});
  const image_set set = load_image_folder(root, 8, 3);
  REQUIRE(set.count() == 3);
  CHECK(set.classes == std::vector<std::string>{"cat", "dog"});
  CHECK(set.labels == std::vector<int>{0, 0, 1});
  const auto pixel = [&](std::size_t image, std::size_t y, std::size_t x, std::size_t c) {
    return set.pixels[((image * 8 + y) * 8 + x) * 3 + c];
  };
  CHECK(pixel(0, 5, 7, 0) == 255);  // uniform colours stay uniform through resizing
  CHECK(pixel(0, 5, 7, 2) == 0);
  CHECK(pixel(1, 0, 0, 2) == 255);
  CHECK(pixel(2, 3, 3, 0) == 90);
  CHECK(pixel(2, 3, 3, 1) == 90);

  const image_set grey = load_image_folder(root, 4, 1);
  CHECK(grey.pixels.size() == 3u * 4 * 4);
}

TEST_CASE("CSV files list images with labels or captions", "[clip][data]") {
  alloy::testing::test_folder folder;
  write_png(folder.path() / "img" / "one.png", 5, 5, 3, {10, 20, 30});
  write_png(folder.path() / "img" / "two.png", 5, 5, 3, {40, 50, 60});
  std::ofstream(folder.path() / "named.csv") << "path,label\nimg/one.png,zebra\nimg/two.png,apple\n";
  const image_set named = load_image_csv(folder.path() / "named.csv", 4, 3);
  CHECK(named.classes == std::vector<std::string>{"apple", "zebra"});
  CHECK(named.labels == std::vector<int>{1, 0});
  std::ofstream(folder.path() / "numbered.csv") << "path,label\nimg/one.png,3\nimg/two.png,1\n";
  const image_set numbered = load_image_csv(folder.path() / "numbered.csv", 4, 3);
  CHECK(numbered.labels == std::vector<int>{3, 1});
  CHECK(numbered.classes.size() == 4);
  std::ofstream(folder.path() / "captions.csv") << "path,caption\n\"img/two.png\",\"a photo of a \"\"thing\"\", grey\"\n";
  const image_set captioned = load_image_csv(folder.path() / "captions.csv", 4, 3);
  CHECK(captioned.captions == std::vector<std::string>{"a photo of a \"thing\", grey"});
  CHECK(captioned.labels.empty());
  CHECK(captioned.pixels[0] == 40);
}

TEST_CASE("bad image files and CSV lines are named", "[clip][data]") {
  alloy::testing::test_folder folder;
  std::filesystem::create_directories(folder.path() / "root" / "cls");
  std::ofstream(folder.path() / "root" / "cls" / "broken.png") << "not an image";
  CHECK_THROWS_WITH(load_image_folder(folder.path() / "root", 8, 3),
                    Catch::Contains("broken.png") && Catch::Contains("cannot be read as an image"));
  std::filesystem::create_directories(folder.path() / "empty" / "nothing");
  CHECK_THROWS_WITH(load_image_folder(folder.path() / "empty", 8, 3), Catch::Contains("holds no image files"));
  CHECK_THROWS_WITH(load_image_folder(folder.path() / "missing", 8, 3), Catch::Contains("is not a folder"));
  std::ofstream(folder.path() / "bad.csv") << "path,label\nimg.png,1\nthree,fields,here\n";
  CHECK_THROWS_WITH(load_image_csv(folder.path() / "bad.csv", 8, 3), Catch::Contains("line 3"));
  std::ofstream(folder.path() / "header.csv") << "file,class\nimg.png,1\n";
  CHECK_THROWS_WITH(load_image_csv(folder.path() / "header.csv", 8, 3), Catch::Contains("line 1"));
  std::ofstream(folder.path() / "absent.csv") << "path,label\nnowhere.png,1\n";
  CHECK_THROWS_WITH(load_image_csv(folder.path() / "absent.csv", 8, 3), Catch::Contains("nowhere.png"));
  CHECK_THROWS_WITH(load_image_folder(folder.path() / "root", 8, 2), Catch::Contains("channels 2"));
}
